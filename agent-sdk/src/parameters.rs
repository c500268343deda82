//! Agent parameters: the `<parameter name=".." value=".."/>` children of an `<agent>` entry.

use crate::AgentError;
use std::str::FromStr;

/// The parameters an operator gave an agent in its `<agent>` entry, in file order.
///
/// ```
/// use mta_agent_sdk::Parameters;
///
/// let params = Parameters::from_pairs([("header", "X-Scanned"), ("limit", "5")]);
/// assert_eq!(params.get("header"), Some("X-Scanned"));
/// assert_eq!(params.parse::<u32>("limit").unwrap(), Some(5));
/// assert_eq!(params.get_or("missing", "default"), "default");
/// assert!(params.require("missing").is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parameters {
    pairs: Vec<(String, String)>,
}

impl Parameters {
    /// Parameters from name/value pairs.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }

    /// The value of the first parameter of this name (names compare ignoring ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for this name, in file order (for repeated parameters such as ranges).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value, or `default` when the parameter is absent.
    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// The value, or an error naming the missing parameter.
    pub fn require(&self, name: &str) -> Result<&str, AgentError> {
        self.get(name)
            .ok_or_else(|| AgentError::msg(format!("missing required parameter {name:?}")))
    }

    /// The value parsed as `T`; `Ok(None)` when absent, an error naming the parameter when invalid.
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>, AgentError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|value| {
                value.parse::<T>().map_err(|e| {
                    AgentError::msg(format!("parameter {name:?} value {value:?}: {e}"))
                })
            })
            .transpose()
    }

    /// All pairs, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether no parameter was given.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
