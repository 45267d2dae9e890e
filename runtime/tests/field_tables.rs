//! The guest SDK (transforms/sdk, built for wasm32 without weir's runtime) carries its own copy of
//! the 131-field enriched-event table; weir-snowplow has the runtime's. They must agree name for
//! name and index for index, or a guest would read a different field than the host filters on.

use weir_snowplow::{field_index, FIELDS, FIELD_COUNT};
use weir_transform_sdk::fields as sdk;

#[test]
fn the_guest_sdk_field_names_are_weir_snowplows_in_the_same_order() {
    assert_eq!(sdk::COUNT, FIELD_COUNT);
    let ours: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
    assert_eq!(sdk::NAMES.to_vec(), ours);
}

/// Every `pub const NAME: usize = N;` of the SDK's table names the field at index N.
#[test]
fn every_index_constant_of_the_guest_sdk_points_at_its_field() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../transforms/sdk/src/fields.rs"
    ))
    .expect("the SDK's field table");
    let mut checked = 0;
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": usize = ") else {
            continue;
        };
        if name == "COUNT" {
            continue;
        }
        let index: usize = value.trim_end_matches(';').parse().expect("an index");
        assert_eq!(
            field_index(&name.to_ascii_lowercase()),
            Some(index),
            "transforms/sdk/src/fields.rs: {name} = {index}"
        );
        checked += 1;
    }
    assert_eq!(checked, FIELD_COUNT, "one index constant per field");
}
