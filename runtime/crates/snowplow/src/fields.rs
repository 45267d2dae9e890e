//! The 131 fields of a Snowplow enriched event TSV line, in order, with their types.
//!
//! Source of the order, names and types: snowplow/snowplow-golang-analytics-sdk
//! `analytics/mappings.go` (the SDK Snowbridge uses); identical to
//! `ENRICHED_EVENT_FIELD_TYPES` in the Python analytics SDK 0.2.3 (`event_transformer.py`).

/// Number of tab-separated fields in an enriched event line.
pub const FIELD_COUNT: usize = 131;

/// How a field's TSV text is turned into JSON by the analytics SDKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// Copied as a JSON string.
    String,
    /// A decimal integer (Go `strconv.Atoi`), written as a JSON number.
    Int,
    /// A floating point number (Go `strconv.ParseFloat`), written as a JSON number.
    Double,
    /// `1`/`0` (Go `strconv.ParseBool` also takes `t`, `true`, `f`, `false`, ...), written as
    /// `true`/`false`.
    Bool,
    /// `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), written as RFC 3339 `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    Timestamp,
    /// Self-describing `contexts` JSON, flattened to `contexts_<vendor>_<name>_<model>` arrays.
    Contexts,
    /// Self-describing `unstruct_event` JSON, flattened to `unstruct_event_<vendor>_<name>_<model>`.
    Unstruct,
}

impl FieldType {
    /// Lower-case name of the type, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "integer",
            FieldType::Double => "double",
            FieldType::Bool => "boolean",
            FieldType::Timestamp => "timestamp",
            FieldType::Contexts => "contexts",
            FieldType::Unstruct => "unstruct event",
        }
    }
}

/// One enriched field: its name and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name, e.g. `app_id`.
    pub name: &'static str,
    /// The field's type.
    pub ty: FieldType,
    /// `"name":`, ready to be written into a JSON object.
    pub(crate) json_key: &'static str,
}

macro_rules! f {
    ($name:ident, $ty:ident) => {
        Field {
            name: stringify!($name),
            ty: FieldType::$ty,
            json_key: concat!("\"", stringify!($name), "\":"),
        }
    };
}

/// Index of `geo_latitude`.
pub const GEO_LATITUDE: usize = 22;
/// Index of `geo_longitude`.
pub const GEO_LONGITUDE: usize = 23;
/// Index of `contexts`.
pub const CONTEXTS: usize = 52;
/// Index of `unstruct_event`.
pub const UNSTRUCT_EVENT: usize = 58;
/// Index of `derived_contexts`.
pub const DERIVED_CONTEXTS: usize = 122;
/// Index of `event_vendor`.
pub const EVENT_VENDOR: usize = 125;
/// Index of `event_name`.
pub const EVENT_NAME: usize = 126;
/// Index of `event_format`.
pub const EVENT_FORMAT: usize = 127;
/// Index of `event_version`.
pub const EVENT_VERSION: usize = 128;

/// The 131 enriched fields in TSV order.
pub static FIELDS: [Field; FIELD_COUNT] = [
    f!(app_id, String),                 // 0
    f!(platform, String),               // 1
    f!(etl_tstamp, Timestamp),          // 2
    f!(collector_tstamp, Timestamp),    // 3
    f!(dvce_created_tstamp, Timestamp), // 4
    f!(event, String),                  // 5
    f!(event_id, String),               // 6
    f!(txn_id, Int),                    // 7
    f!(name_tracker, String),           // 8
    f!(v_tracker, String),              // 9
    f!(v_collector, String),            // 10
    f!(v_etl, String),                  // 11
    f!(user_id, String),                // 12
    f!(user_ipaddress, String),         // 13
    f!(user_fingerprint, String),       // 14
    f!(domain_userid, String),          // 15
    f!(domain_sessionidx, Int),         // 16
    f!(network_userid, String),         // 17
    f!(geo_country, String),            // 18
    f!(geo_region, String),             // 19
    f!(geo_city, String),               // 20
    f!(geo_zipcode, String),            // 21
    f!(geo_latitude, Double),           // 22
    f!(geo_longitude, Double),          // 23
    f!(geo_region_name, String),        // 24
    f!(ip_isp, String),                 // 25
    f!(ip_organization, String),        // 26
    f!(ip_domain, String),              // 27
    f!(ip_netspeed, String),            // 28
    f!(page_url, String),               // 29
    f!(page_title, String),             // 30
    f!(page_referrer, String),          // 31
    f!(page_urlscheme, String),         // 32
    f!(page_urlhost, String),           // 33
    f!(page_urlport, Int),              // 34
    f!(page_urlpath, String),           // 35
    f!(page_urlquery, String),          // 36
    f!(page_urlfragment, String),       // 37
    f!(refr_urlscheme, String),         // 38
    f!(refr_urlhost, String),           // 39
    f!(refr_urlport, Int),              // 40
    f!(refr_urlpath, String),           // 41
    f!(refr_urlquery, String),          // 42
    f!(refr_urlfragment, String),       // 43
    f!(refr_medium, String),            // 44
    f!(refr_source, String),            // 45
    f!(refr_term, String),              // 46
    f!(mkt_medium, String),             // 47
    f!(mkt_source, String),             // 48
    f!(mkt_term, String),               // 49
    f!(mkt_content, String),            // 50
    f!(mkt_campaign, String),           // 51
    f!(contexts, Contexts),             // 52
    f!(se_category, String),            // 53
    f!(se_action, String),              // 54
    f!(se_label, String),               // 55
    f!(se_property, String),            // 56
    f!(se_value, String),               // 57
    f!(unstruct_event, Unstruct),       // 58
    f!(tr_orderid, String),             // 59
    f!(tr_affiliation, String),         // 60
    f!(tr_total, Double),               // 61
    f!(tr_tax, Double),                 // 62
    f!(tr_shipping, Double),            // 63
    f!(tr_city, String),                // 64
    f!(tr_state, String),               // 65
    f!(tr_country, String),             // 66
    f!(ti_orderid, String),             // 67
    f!(ti_sku, String),                 // 68
    f!(ti_name, String),                // 69
    f!(ti_category, String),            // 70
    f!(ti_price, Double),               // 71
    f!(ti_quantity, Int),               // 72
    f!(pp_xoffset_min, Int),            // 73
    f!(pp_xoffset_max, Int),            // 74
    f!(pp_yoffset_min, Int),            // 75
    f!(pp_yoffset_max, Int),            // 76
    f!(useragent, String),              // 77
    f!(br_name, String),                // 78
    f!(br_family, String),              // 79
    f!(br_version, String),             // 80
    f!(br_type, String),                // 81
    f!(br_renderengine, String),        // 82
    f!(br_lang, String),                // 83
    f!(br_features_pdf, Bool),          // 84
    f!(br_features_flash, Bool),        // 85
    f!(br_features_java, Bool),         // 86
    f!(br_features_director, Bool),     // 87
    f!(br_features_quicktime, Bool),    // 88
    f!(br_features_realplayer, Bool),   // 89
    f!(br_features_windowsmedia, Bool), // 90
    f!(br_features_gears, Bool),        // 91
    f!(br_features_silverlight, Bool),  // 92
    f!(br_cookies, Bool),               // 93
    f!(br_colordepth, String),          // 94
    f!(br_viewwidth, Int),              // 95
    f!(br_viewheight, Int),             // 96
    f!(os_name, String),                // 97
    f!(os_family, String),              // 98
    f!(os_manufacturer, String),        // 99
    f!(os_timezone, String),            // 100
    f!(dvce_type, String),              // 101
    f!(dvce_ismobile, Bool),            // 102
    f!(dvce_screenwidth, Int),          // 103
    f!(dvce_screenheight, Int),         // 104
    f!(doc_charset, String),            // 105
    f!(doc_width, Int),                 // 106
    f!(doc_height, Int),                // 107
    f!(tr_currency, String),            // 108
    f!(tr_total_base, Double),          // 109
    f!(tr_tax_base, Double),            // 110
    f!(tr_shipping_base, Double),       // 111
    f!(ti_currency, String),            // 112
    f!(ti_price_base, Double),          // 113
    f!(base_currency, String),          // 114
    f!(geo_timezone, String),           // 115
    f!(mkt_clickid, String),            // 116
    f!(mkt_network, String),            // 117
    f!(etl_tags, String),               // 118
    f!(dvce_sent_tstamp, Timestamp),    // 119
    f!(refr_domain_userid, String),     // 120
    f!(refr_device_tstamp, Timestamp),  // 121
    f!(derived_contexts, Contexts),     // 122
    f!(domain_sessionid, String),       // 123
    f!(derived_tstamp, Timestamp),      // 124
    f!(event_vendor, String),           // 125
    f!(event_name, String),             // 126
    f!(event_format, String),           // 127
    f!(event_version, String),          // 128
    f!(event_fingerprint, String),      // 129
    f!(true_tstamp, Timestamp),         // 130
];

/// The index of the field called `name` (exact, case-sensitive match), if there is one.
pub fn field_index(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| f.name == name)
}

/// The names of all 131 fields, in TSV order (for "did you mean" suggestions).
pub fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}
