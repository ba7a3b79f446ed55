//! Decoding a step's JSON configuration and describing it as a JSON Schema.

use serde::de::DeserializeOwned;

use crate::StepError;

/// Decodes a step's `with` configuration (JSON text) into `C`.
///
/// On failure the error is [`StepError::InvalidConfig`] naming the JSON path of the
/// offending field (`env.PATH`, `paths[2]`) and what was expected there.
///
/// ```
/// #[derive(serde::Deserialize, Debug)]
/// struct Config { script: String }
///
/// let err = arkline_sdk::decode_config::<Config>(r#"{"script": 3}"#).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid config at `script`: invalid type: integer `3`, expected a string"
/// );
/// ```
pub fn decode_config<C: DeserializeOwned>(json: &str) -> Result<C, StepError> {
    // An absent `with` is sent as an empty string; treat it as an empty object so a
    // config type whose fields all have defaults decodes.
    let json = if json.trim().is_empty() { "{}" } else { json };
    crate::json::from_str(json).map_err(|e| StepError::InvalidConfig {
        field: e.path(),
        message: e.message().to_owned(),
    })
}

/// The config schema as `describe()` reports it: the JSON Schema of `C` as
/// JSON text when the SDK's `schema` feature is on, and an empty string (not
/// in this component) when it is off.
///
/// `cargo ark` ships components built without the feature, so they carry no
/// `schemars` code (about 80 KiB of a hello-world component), and takes the
/// schemas from a second build with it; the `.ark` holds them as files.
pub fn config_schema<C: schemars::JsonSchema>() -> String {
    if cfg!(feature = "schema") {
        schema_json::<C>()
    } else {
        String::new()
    }
}

/// The JSON Schema of config type `C`, as JSON text.
pub fn schema_json<C: schemars::JsonSchema>() -> String {
    let schema = schemars::schema_for!(C);
    // Serialising a schema (a JSON value) cannot fail.
    serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use schemars::JsonSchema;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        /// The script.
        script: String,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        retries: u32,
    }

    fn invalid(json: &str) -> (Option<String>, String) {
        match decode_config::<Config>(json) {
            Err(StepError::InvalidConfig { field, message }) => (field, message),
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }

    #[test]
    fn decodes_valid_config() {
        let c: Config = decode_config(r#"{"script":"echo hi","env":{"A":"1"}}"#).expect("valid");
        assert_eq!(c.script, "echo hi");
        assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn wrong_type_names_field_and_expected_type() {
        let (field, message) = invalid(r#"{"script": 3}"#);
        assert_eq!(field.as_deref(), Some("script"));
        assert_eq!(message, "invalid type: integer `3`, expected a string");
    }

    #[test]
    fn nested_field_path() {
        let (field, message) = invalid(r#"{"script":"x","env":{"A": true}}"#);
        assert_eq!(field.as_deref(), Some("env.A"));
        assert!(message.contains("expected a string"), "{message}");
    }

    #[test]
    fn missing_field_is_named() {
        let (field, message) = invalid(r#"{"env":{}}"#);
        assert_eq!(field, None);
        assert_eq!(message, "missing field `script`");
    }

    #[test]
    fn unknown_field_is_named() {
        let (field, message) = invalid(r#"{"script":"x","scirpt":"y"}"#);
        assert_eq!(field.as_deref(), Some("scirpt"));
        assert!(message.starts_with("unknown field `scirpt`"), "{message}");
    }

    #[test]
    fn negative_number_for_unsigned() {
        let (field, message) = invalid(r#"{"script":"x","retries":-1}"#);
        assert_eq!(field.as_deref(), Some("retries"));
        assert!(message.contains("expected u32"), "{message}");
    }

    #[test]
    fn malformed_json() {
        let (field, message) = invalid(r#"{"script":"#);
        assert_eq!(field.as_deref(), Some("script"));
        assert!(message.contains("EOF"), "{message}");
    }

    #[test]
    fn trailing_input_is_refused() {
        let (field, message) = invalid(r#"{"script":"x"} garbage"#);
        assert_eq!(field, None);
        assert!(message.contains("trailing characters"), "{message}");
    }

    #[test]
    fn empty_config_is_an_empty_object() {
        #[derive(Deserialize)]
        struct AllDefault {
            #[serde(default)]
            _x: u32,
        }
        assert!(decode_config::<AllDefault>("").is_ok());
    }

    #[test]
    fn schema_lists_fields_and_required() {
        let schema: serde_json::Value =
            serde_json::from_str(&schema_json::<Config>()).expect("json");
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["script"]["type"], "string");
        assert_eq!(schema["properties"]["script"]["description"], "The script.");
        assert_eq!(schema["required"], serde_json::json!(["script"]));
        assert_eq!(schema["additionalProperties"], false);
    }
}
