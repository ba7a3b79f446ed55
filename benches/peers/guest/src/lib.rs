//! The `upper` step of arkline's `faults` biz, as an Extism plugin: the same work
//! (parse `{"text": …}`, upper-case it, return `{"text": …}` as JSON) so that the
//! peer benchmark compares the cost of running a step, not of the step itself.

use extism_pdk::{FnResult, Json, plugin_fn};
use serde::{Deserialize, Serialize};

/// Input and output of `upper`, as in the `faults` biz.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// The text to upper-case (input) or upper-cased (output).
    pub text: String,
}

/// Upper-cases `text`.
#[plugin_fn]
pub fn upper(Json(input): Json<Text>) -> FnResult<Json<Text>> {
    Ok(Json(Text {
        text: input.text.to_uppercase(),
    }))
}
