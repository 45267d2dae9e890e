//! The 131 fields of a Snowplow enriched event TSV line (generated from the field list the
//! analytics SDKs use: snowplow-golang-analytics-sdk `analytics/mappings.go`).

/// Number of tab-separated fields in an enriched event line.
pub const COUNT: usize = 131;

/// Field names in TSV order.
pub const NAMES: [&str; COUNT] = [
    "app_id",
    "platform",
    "etl_tstamp",
    "collector_tstamp",
    "dvce_created_tstamp",
    "event",
    "event_id",
    "txn_id",
    "name_tracker",
    "v_tracker",
    "v_collector",
    "v_etl",
    "user_id",
    "user_ipaddress",
    "user_fingerprint",
    "domain_userid",
    "domain_sessionidx",
    "network_userid",
    "geo_country",
    "geo_region",
    "geo_city",
    "geo_zipcode",
    "geo_latitude",
    "geo_longitude",
    "geo_region_name",
    "ip_isp",
    "ip_organization",
    "ip_domain",
    "ip_netspeed",
    "page_url",
    "page_title",
    "page_referrer",
    "page_urlscheme",
    "page_urlhost",
    "page_urlport",
    "page_urlpath",
    "page_urlquery",
    "page_urlfragment",
    "refr_urlscheme",
    "refr_urlhost",
    "refr_urlport",
    "refr_urlpath",
    "refr_urlquery",
    "refr_urlfragment",
    "refr_medium",
    "refr_source",
    "refr_term",
    "mkt_medium",
    "mkt_source",
    "mkt_term",
    "mkt_content",
    "mkt_campaign",
    "contexts",
    "se_category",
    "se_action",
    "se_label",
    "se_property",
    "se_value",
    "unstruct_event",
    "tr_orderid",
    "tr_affiliation",
    "tr_total",
    "tr_tax",
    "tr_shipping",
    "tr_city",
    "tr_state",
    "tr_country",
    "ti_orderid",
    "ti_sku",
    "ti_name",
    "ti_category",
    "ti_price",
    "ti_quantity",
    "pp_xoffset_min",
    "pp_xoffset_max",
    "pp_yoffset_min",
    "pp_yoffset_max",
    "useragent",
    "br_name",
    "br_family",
    "br_version",
    "br_type",
    "br_renderengine",
    "br_lang",
    "br_features_pdf",
    "br_features_flash",
    "br_features_java",
    "br_features_director",
    "br_features_quicktime",
    "br_features_realplayer",
    "br_features_windowsmedia",
    "br_features_gears",
    "br_features_silverlight",
    "br_cookies",
    "br_colordepth",
    "br_viewwidth",
    "br_viewheight",
    "os_name",
    "os_family",
    "os_manufacturer",
    "os_timezone",
    "dvce_type",
    "dvce_ismobile",
    "dvce_screenwidth",
    "dvce_screenheight",
    "doc_charset",
    "doc_width",
    "doc_height",
    "tr_currency",
    "tr_total_base",
    "tr_tax_base",
    "tr_shipping_base",
    "ti_currency",
    "ti_price_base",
    "base_currency",
    "geo_timezone",
    "mkt_clickid",
    "mkt_network",
    "etl_tags",
    "dvce_sent_tstamp",
    "refr_domain_userid",
    "refr_device_tstamp",
    "derived_contexts",
    "domain_sessionid",
    "derived_tstamp",
    "event_vendor",
    "event_name",
    "event_format",
    "event_version",
    "event_fingerprint",
    "true_tstamp",
];

/// Index of `app_id`.
pub const APP_ID: usize = 0;
/// Index of `platform`.
pub const PLATFORM: usize = 1;
/// Index of `etl_tstamp`.
pub const ETL_TSTAMP: usize = 2;
/// Index of `collector_tstamp`.
pub const COLLECTOR_TSTAMP: usize = 3;
/// Index of `dvce_created_tstamp`.
pub const DVCE_CREATED_TSTAMP: usize = 4;
/// Index of `event`.
pub const EVENT: usize = 5;
/// Index of `event_id`.
pub const EVENT_ID: usize = 6;
/// Index of `txn_id`.
pub const TXN_ID: usize = 7;
/// Index of `name_tracker`.
pub const NAME_TRACKER: usize = 8;
/// Index of `v_tracker`.
pub const V_TRACKER: usize = 9;
/// Index of `v_collector`.
pub const V_COLLECTOR: usize = 10;
/// Index of `v_etl`.
pub const V_ETL: usize = 11;
/// Index of `user_id`.
pub const USER_ID: usize = 12;
/// Index of `user_ipaddress`.
pub const USER_IPADDRESS: usize = 13;
/// Index of `user_fingerprint`.
pub const USER_FINGERPRINT: usize = 14;
/// Index of `domain_userid`.
pub const DOMAIN_USERID: usize = 15;
/// Index of `domain_sessionidx`.
pub const DOMAIN_SESSIONIDX: usize = 16;
/// Index of `network_userid`.
pub const NETWORK_USERID: usize = 17;
/// Index of `geo_country`.
pub const GEO_COUNTRY: usize = 18;
/// Index of `geo_region`.
pub const GEO_REGION: usize = 19;
/// Index of `geo_city`.
pub const GEO_CITY: usize = 20;
/// Index of `geo_zipcode`.
pub const GEO_ZIPCODE: usize = 21;
/// Index of `geo_latitude`.
pub const GEO_LATITUDE: usize = 22;
/// Index of `geo_longitude`.
pub const GEO_LONGITUDE: usize = 23;
/// Index of `geo_region_name`.
pub const GEO_REGION_NAME: usize = 24;
/// Index of `ip_isp`.
pub const IP_ISP: usize = 25;
/// Index of `ip_organization`.
pub const IP_ORGANIZATION: usize = 26;
/// Index of `ip_domain`.
pub const IP_DOMAIN: usize = 27;
/// Index of `ip_netspeed`.
pub const IP_NETSPEED: usize = 28;
/// Index of `page_url`.
pub const PAGE_URL: usize = 29;
/// Index of `page_title`.
pub const PAGE_TITLE: usize = 30;
/// Index of `page_referrer`.
pub const PAGE_REFERRER: usize = 31;
/// Index of `page_urlscheme`.
pub const PAGE_URLSCHEME: usize = 32;
/// Index of `page_urlhost`.
pub const PAGE_URLHOST: usize = 33;
/// Index of `page_urlport`.
pub const PAGE_URLPORT: usize = 34;
/// Index of `page_urlpath`.
pub const PAGE_URLPATH: usize = 35;
/// Index of `page_urlquery`.
pub const PAGE_URLQUERY: usize = 36;
/// Index of `page_urlfragment`.
pub const PAGE_URLFRAGMENT: usize = 37;
/// Index of `refr_urlscheme`.
pub const REFR_URLSCHEME: usize = 38;
/// Index of `refr_urlhost`.
pub const REFR_URLHOST: usize = 39;
/// Index of `refr_urlport`.
pub const REFR_URLPORT: usize = 40;
/// Index of `refr_urlpath`.
pub const REFR_URLPATH: usize = 41;
/// Index of `refr_urlquery`.
pub const REFR_URLQUERY: usize = 42;
/// Index of `refr_urlfragment`.
pub const REFR_URLFRAGMENT: usize = 43;
/// Index of `refr_medium`.
pub const REFR_MEDIUM: usize = 44;
/// Index of `refr_source`.
pub const REFR_SOURCE: usize = 45;
/// Index of `refr_term`.
pub const REFR_TERM: usize = 46;
/// Index of `mkt_medium`.
pub const MKT_MEDIUM: usize = 47;
/// Index of `mkt_source`.
pub const MKT_SOURCE: usize = 48;
/// Index of `mkt_term`.
pub const MKT_TERM: usize = 49;
/// Index of `mkt_content`.
pub const MKT_CONTENT: usize = 50;
/// Index of `mkt_campaign`.
pub const MKT_CAMPAIGN: usize = 51;
/// Index of `contexts`.
pub const CONTEXTS: usize = 52;
/// Index of `se_category`.
pub const SE_CATEGORY: usize = 53;
/// Index of `se_action`.
pub const SE_ACTION: usize = 54;
/// Index of `se_label`.
pub const SE_LABEL: usize = 55;
/// Index of `se_property`.
pub const SE_PROPERTY: usize = 56;
/// Index of `se_value`.
pub const SE_VALUE: usize = 57;
/// Index of `unstruct_event`.
pub const UNSTRUCT_EVENT: usize = 58;
/// Index of `tr_orderid`.
pub const TR_ORDERID: usize = 59;
/// Index of `tr_affiliation`.
pub const TR_AFFILIATION: usize = 60;
/// Index of `tr_total`.
pub const TR_TOTAL: usize = 61;
/// Index of `tr_tax`.
pub const TR_TAX: usize = 62;
/// Index of `tr_shipping`.
pub const TR_SHIPPING: usize = 63;
/// Index of `tr_city`.
pub const TR_CITY: usize = 64;
/// Index of `tr_state`.
pub const TR_STATE: usize = 65;
/// Index of `tr_country`.
pub const TR_COUNTRY: usize = 66;
/// Index of `ti_orderid`.
pub const TI_ORDERID: usize = 67;
/// Index of `ti_sku`.
pub const TI_SKU: usize = 68;
/// Index of `ti_name`.
pub const TI_NAME: usize = 69;
/// Index of `ti_category`.
pub const TI_CATEGORY: usize = 70;
/// Index of `ti_price`.
pub const TI_PRICE: usize = 71;
/// Index of `ti_quantity`.
pub const TI_QUANTITY: usize = 72;
/// Index of `pp_xoffset_min`.
pub const PP_XOFFSET_MIN: usize = 73;
/// Index of `pp_xoffset_max`.
pub const PP_XOFFSET_MAX: usize = 74;
/// Index of `pp_yoffset_min`.
pub const PP_YOFFSET_MIN: usize = 75;
/// Index of `pp_yoffset_max`.
pub const PP_YOFFSET_MAX: usize = 76;
/// Index of `useragent`.
pub const USERAGENT: usize = 77;
/// Index of `br_name`.
pub const BR_NAME: usize = 78;
/// Index of `br_family`.
pub const BR_FAMILY: usize = 79;
/// Index of `br_version`.
pub const BR_VERSION: usize = 80;
/// Index of `br_type`.
pub const BR_TYPE: usize = 81;
/// Index of `br_renderengine`.
pub const BR_RENDERENGINE: usize = 82;
/// Index of `br_lang`.
pub const BR_LANG: usize = 83;
/// Index of `br_features_pdf`.
pub const BR_FEATURES_PDF: usize = 84;
/// Index of `br_features_flash`.
pub const BR_FEATURES_FLASH: usize = 85;
/// Index of `br_features_java`.
pub const BR_FEATURES_JAVA: usize = 86;
/// Index of `br_features_director`.
pub const BR_FEATURES_DIRECTOR: usize = 87;
/// Index of `br_features_quicktime`.
pub const BR_FEATURES_QUICKTIME: usize = 88;
/// Index of `br_features_realplayer`.
pub const BR_FEATURES_REALPLAYER: usize = 89;
/// Index of `br_features_windowsmedia`.
pub const BR_FEATURES_WINDOWSMEDIA: usize = 90;
/// Index of `br_features_gears`.
pub const BR_FEATURES_GEARS: usize = 91;
/// Index of `br_features_silverlight`.
pub const BR_FEATURES_SILVERLIGHT: usize = 92;
/// Index of `br_cookies`.
pub const BR_COOKIES: usize = 93;
/// Index of `br_colordepth`.
pub const BR_COLORDEPTH: usize = 94;
/// Index of `br_viewwidth`.
pub const BR_VIEWWIDTH: usize = 95;
/// Index of `br_viewheight`.
pub const BR_VIEWHEIGHT: usize = 96;
/// Index of `os_name`.
pub const OS_NAME: usize = 97;
/// Index of `os_family`.
pub const OS_FAMILY: usize = 98;
/// Index of `os_manufacturer`.
pub const OS_MANUFACTURER: usize = 99;
/// Index of `os_timezone`.
pub const OS_TIMEZONE: usize = 100;
/// Index of `dvce_type`.
pub const DVCE_TYPE: usize = 101;
/// Index of `dvce_ismobile`.
pub const DVCE_ISMOBILE: usize = 102;
/// Index of `dvce_screenwidth`.
pub const DVCE_SCREENWIDTH: usize = 103;
/// Index of `dvce_screenheight`.
pub const DVCE_SCREENHEIGHT: usize = 104;
/// Index of `doc_charset`.
pub const DOC_CHARSET: usize = 105;
/// Index of `doc_width`.
pub const DOC_WIDTH: usize = 106;
/// Index of `doc_height`.
pub const DOC_HEIGHT: usize = 107;
/// Index of `tr_currency`.
pub const TR_CURRENCY: usize = 108;
/// Index of `tr_total_base`.
pub const TR_TOTAL_BASE: usize = 109;
/// Index of `tr_tax_base`.
pub const TR_TAX_BASE: usize = 110;
/// Index of `tr_shipping_base`.
pub const TR_SHIPPING_BASE: usize = 111;
/// Index of `ti_currency`.
pub const TI_CURRENCY: usize = 112;
/// Index of `ti_price_base`.
pub const TI_PRICE_BASE: usize = 113;
/// Index of `base_currency`.
pub const BASE_CURRENCY: usize = 114;
/// Index of `geo_timezone`.
pub const GEO_TIMEZONE: usize = 115;
/// Index of `mkt_clickid`.
pub const MKT_CLICKID: usize = 116;
/// Index of `mkt_network`.
pub const MKT_NETWORK: usize = 117;
/// Index of `etl_tags`.
pub const ETL_TAGS: usize = 118;
/// Index of `dvce_sent_tstamp`.
pub const DVCE_SENT_TSTAMP: usize = 119;
/// Index of `refr_domain_userid`.
pub const REFR_DOMAIN_USERID: usize = 120;
/// Index of `refr_device_tstamp`.
pub const REFR_DEVICE_TSTAMP: usize = 121;
/// Index of `derived_contexts`.
pub const DERIVED_CONTEXTS: usize = 122;
/// Index of `domain_sessionid`.
pub const DOMAIN_SESSIONID: usize = 123;
/// Index of `derived_tstamp`.
pub const DERIVED_TSTAMP: usize = 124;
/// Index of `event_vendor`.
pub const EVENT_VENDOR: usize = 125;
/// Index of `event_name`.
pub const EVENT_NAME: usize = 126;
/// Index of `event_format`.
pub const EVENT_FORMAT: usize = 127;
/// Index of `event_version`.
pub const EVENT_VERSION: usize = 128;
/// Index of `event_fingerprint`.
pub const EVENT_FINGERPRINT: usize = 129;
/// Index of `true_tstamp`.
pub const TRUE_TSTAMP: usize = 130;

/// The index of the field called `name`, if there is one.
pub fn index(name: &str) -> Option<usize> {
    Some(match name {
        "app_id" => 0,
        "platform" => 1,
        "etl_tstamp" => 2,
        "collector_tstamp" => 3,
        "dvce_created_tstamp" => 4,
        "event" => 5,
        "event_id" => 6,
        "txn_id" => 7,
        "name_tracker" => 8,
        "v_tracker" => 9,
        "v_collector" => 10,
        "v_etl" => 11,
        "user_id" => 12,
        "user_ipaddress" => 13,
        "user_fingerprint" => 14,
        "domain_userid" => 15,
        "domain_sessionidx" => 16,
        "network_userid" => 17,
        "geo_country" => 18,
        "geo_region" => 19,
        "geo_city" => 20,
        "geo_zipcode" => 21,
        "geo_latitude" => 22,
        "geo_longitude" => 23,
        "geo_region_name" => 24,
        "ip_isp" => 25,
        "ip_organization" => 26,
        "ip_domain" => 27,
        "ip_netspeed" => 28,
        "page_url" => 29,
        "page_title" => 30,
        "page_referrer" => 31,
        "page_urlscheme" => 32,
        "page_urlhost" => 33,
        "page_urlport" => 34,
        "page_urlpath" => 35,
        "page_urlquery" => 36,
        "page_urlfragment" => 37,
        "refr_urlscheme" => 38,
        "refr_urlhost" => 39,
        "refr_urlport" => 40,
        "refr_urlpath" => 41,
        "refr_urlquery" => 42,
        "refr_urlfragment" => 43,
        "refr_medium" => 44,
        "refr_source" => 45,
        "refr_term" => 46,
        "mkt_medium" => 47,
        "mkt_source" => 48,
        "mkt_term" => 49,
        "mkt_content" => 50,
        "mkt_campaign" => 51,
        "contexts" => 52,
        "se_category" => 53,
        "se_action" => 54,
        "se_label" => 55,
        "se_property" => 56,
        "se_value" => 57,
        "unstruct_event" => 58,
        "tr_orderid" => 59,
        "tr_affiliation" => 60,
        "tr_total" => 61,
        "tr_tax" => 62,
        "tr_shipping" => 63,
        "tr_city" => 64,
        "tr_state" => 65,
        "tr_country" => 66,
        "ti_orderid" => 67,
        "ti_sku" => 68,
        "ti_name" => 69,
        "ti_category" => 70,
        "ti_price" => 71,
        "ti_quantity" => 72,
        "pp_xoffset_min" => 73,
        "pp_xoffset_max" => 74,
        "pp_yoffset_min" => 75,
        "pp_yoffset_max" => 76,
        "useragent" => 77,
        "br_name" => 78,
        "br_family" => 79,
        "br_version" => 80,
        "br_type" => 81,
        "br_renderengine" => 82,
        "br_lang" => 83,
        "br_features_pdf" => 84,
        "br_features_flash" => 85,
        "br_features_java" => 86,
        "br_features_director" => 87,
        "br_features_quicktime" => 88,
        "br_features_realplayer" => 89,
        "br_features_windowsmedia" => 90,
        "br_features_gears" => 91,
        "br_features_silverlight" => 92,
        "br_cookies" => 93,
        "br_colordepth" => 94,
        "br_viewwidth" => 95,
        "br_viewheight" => 96,
        "os_name" => 97,
        "os_family" => 98,
        "os_manufacturer" => 99,
        "os_timezone" => 100,
        "dvce_type" => 101,
        "dvce_ismobile" => 102,
        "dvce_screenwidth" => 103,
        "dvce_screenheight" => 104,
        "doc_charset" => 105,
        "doc_width" => 106,
        "doc_height" => 107,
        "tr_currency" => 108,
        "tr_total_base" => 109,
        "tr_tax_base" => 110,
        "tr_shipping_base" => 111,
        "ti_currency" => 112,
        "ti_price_base" => 113,
        "base_currency" => 114,
        "geo_timezone" => 115,
        "mkt_clickid" => 116,
        "mkt_network" => 117,
        "etl_tags" => 118,
        "dvce_sent_tstamp" => 119,
        "refr_domain_userid" => 120,
        "refr_device_tstamp" => 121,
        "derived_contexts" => 122,
        "domain_sessionid" => 123,
        "derived_tstamp" => 124,
        "event_vendor" => 125,
        "event_name" => 126,
        "event_format" => 127,
        "event_version" => 128,
        "event_fingerprint" => 129,
        "true_tstamp" => 130,
        _ => return None,
    })
}
