//! Kubernetes label selector matching, as the API server defines it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a selector cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// Index into `matchExpressions`.
    pub expression: usize,
    pub message: String,
}

/// An object's labels, as a selector reads them.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
    /// Every (key, value), in key order.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Labels in one allocation: each key and each value followed by a NUL, in key order.
/// A `BTreeMap` allocates an 11-slot node (about 540 bytes) for one label, a slice of
/// pairs three allocations, and there is a label set per RealServer. No label holds a
/// NUL: the API server refuses one, and so does the file's validation
/// ([`crate::validate`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet(Box<str>);

impl Labels for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        // Keys are in order: past `key`, it is not there.
        self.pairs()
            .take_while(|(k, _)| *k <= key)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split_terminator('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }
}

impl From<BTreeMap<String, String>> for LabelSet {
    fn from(labels: BTreeMap<String, String>) -> Self {
        let mut text =
            String::with_capacity(labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        // A map's keys are in order and distinct, as `pairs` promises. A pair with a
        // NUL (refused by validation) is left out rather than read as other labels.
        for (k, v) in labels
            .iter()
            .filter(|(k, v)| !k.contains('\0') && !v.contains('\0'))
        {
            for part in [k, v] {
                text.push_str(part);
                text.push('\0');
            }
        }
        Self(text.into_boxed_str())
    }
}

/// An object selectors pick: its namespace and labels.
pub trait Selectable {
    type Labels: Labels;
    fn namespace(&self) -> &str;
    fn labels(&self) -> &Self::Labels;
}

impl Selectable for crate::RealServer {
    type Labels = BTreeMap<String, String>;
    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }
    fn labels(&self) -> &Self::Labels {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_ref().unwrap_or(&NONE)
    }
}

/// Whether `labels` match `selector`. An empty selector matches everything. A malformed
/// expression is an error whatever the labels, so a typo never silently selects nothing.
pub fn matches(selector: &LabelSelector, labels: &impl Labels) -> Result<bool, SelectorError> {
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    for (i, req) in expressions.iter().enumerate() {
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" => need_values(i, &req.operator, values)?,
            "Exists" | "DoesNotExist" => no_values(i, &req.operator, values)?,
            other => {
                return Err(SelectorError {
                    expression: i,
                    message: format!(
                        "operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    ),
                })
            }
        }
    }
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()));
    let expressions_match = expressions.iter().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.label(&req.key);
        let listed = |v: &str| values.iter().any(|x| x == v);
        match req.operator.as_str() {
            "In" => value.is_some_and(listed),
            "NotIn" => value.is_none_or(|v| !listed(v)),
            "Exists" => value.is_some(),
            _ => value.is_none(),
        }
    });
    Ok(labels_match && expressions_match)
}

fn need_values(i: usize, op: &str, values: &[String]) -> Result<(), SelectorError> {
    if values.is_empty() {
        return Err(SelectorError {
            expression: i,
            message: format!("operator {op} needs at least one value"),
        });
    }
    Ok(())
}

fn no_values(i: usize, op: &str, values: &[String]) -> Result<(), SelectorError> {
    if !values.is_empty() {
        return Err(SelectorError {
            expression: i,
            message: format!("operator {op} takes no values"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let cases: Vec<(&str, LabelSelector, bool)> = vec![
            ("empty selector matches all", sel(&[], vec![]), true),
            ("matchLabels equal", sel(&[("app", "web")], vec![]), true),
            ("matchLabels differ", sel(&[("app", "db")], vec![]), false),
            (
                "matchLabels missing key",
                sel(&[("zone", "a")], vec![]),
                false,
            ),
            (
                "In hit",
                sel(&[], vec![expr("app", "In", &["db", "web"])]),
                true,
            ),
            ("In miss", sel(&[], vec![expr("app", "In", &["db"])]), false),
            (
                "In absent key",
                sel(&[], vec![expr("zone", "In", &["a"])]),
                false,
            ),
            (
                "NotIn hit",
                sel(&[], vec![expr("app", "NotIn", &["web"])]),
                false,
            ),
            (
                "NotIn absent key",
                sel(&[], vec![expr("zone", "NotIn", &["a"])]),
                true,
            ),
            ("Exists", sel(&[], vec![expr("tier", "Exists", &[])]), true),
            (
                "Exists absent",
                sel(&[], vec![expr("zone", "Exists", &[])]),
                false,
            ),
            (
                "DoesNotExist",
                sel(&[], vec![expr("zone", "DoesNotExist", &[])]),
                true,
            ),
            (
                "DoesNotExist present",
                sel(&[], vec![expr("app", "DoesNotExist", &[])]),
                false,
            ),
            (
                "labels and expressions are ANDed",
                sel(&[("app", "web")], vec![expr("tier", "In", &["back"])]),
                false,
            ),
        ];
        let compact = LabelSet::from(web.clone());
        for (name, s, want) in cases {
            assert_eq!(matches(&s, &web), Ok(want), "{name}");
            assert_eq!(matches(&s, &compact), Ok(want), "{name}, as a LabelSet");
        }
    }

    #[test]
    fn a_label_set_gives_back_every_pair_in_key_order_and_each_value() {
        let map: BTreeMap<String, String> = [("tier", "back"), ("app", "web"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let set = LabelSet::from(map.clone());
        assert_eq!(
            set.pairs().collect::<Vec<_>>(),
            map.pairs().collect::<Vec<_>>()
        );
        assert_eq!(set.label("app"), Some("web"));
        assert_eq!(set.label("empty"), Some(""));
        assert_eq!(set.label("web"), None, "a value is not a key");
        assert_eq!(LabelSet::default().pairs().count(), 0);
        // A NUL (refused by validation) does not shift the pairs after it.
        let odd: BTreeMap<String, String> = [("a", "x\0b"), ("c", "d")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let set = LabelSet::from(odd);
        assert_eq!(set.pairs().collect::<Vec<_>>(), vec![("c", "d")]);
        assert_eq!(set.label("b"), None);
    }

    #[test]
    fn malformed_expressions_are_errors_whatever_the_labels() {
        let web = labels(&[("app", "web")]);
        for (s, idx) in [
            (sel(&[], vec![expr("app", "Equals", &["web"])]), 0),
            (sel(&[], vec![expr("app", "In", &[])]), 0),
            (sel(&[], vec![expr("app", "Exists", &["x"])]), 0),
            // Even when matchLabels already fails.
            (sel(&[("app", "db")], vec![expr("app", "Bogus", &[])]), 0),
            (
                sel(
                    &[],
                    vec![expr("app", "In", &["db"]), expr("x", "Nope", &[])],
                ),
                1,
            ),
        ] {
            let err = matches(&s, &web).unwrap_err();
            assert_eq!(err.expression, idx, "{s:?}");
        }
    }
}

/// RealServers by namespace and by (namespace, label, value), in input order, so a
/// selector looks only at the RealServers that can match it: with 10,000
/// VirtualServices over 100,000 RealServers, scanning all of them per selector is
/// a billion label checks.
#[derive(Debug)]
pub struct RealServerIndex<'a, R> {
    all: Vec<&'a R>,
    /// Positions in `all`, by namespace.
    by_namespace: HashMap<&'a str, Vec<u32>>,
    /// namespace -> (key, value) -> index into `lists` (borrowed: no string is built
    /// per label, at 100,000 RealServers a plan would allocate one each).
    by_label: HashMap<&'a str, HashMap<(&'a str, &'a str), usize>>,
    lists: Vec<Vec<u32>>,
}

impl<'a, R: Selectable> RealServerIndex<'a, R> {
    pub fn new(all: impl IntoIterator<Item = &'a R>) -> Self {
        let all: Vec<&R> = all.into_iter().collect();
        let mut by_namespace: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut by_label: HashMap<&str, HashMap<(&str, &str), usize>> = HashMap::new();
        let mut lists: Vec<Vec<u32>> = Vec::new();
        for (at, rs) in all.iter().enumerate() {
            let at = at as u32;
            let ns = rs.namespace();
            by_namespace.entry(ns).or_default().push(at);
            let labels = by_label.entry(ns).or_default();
            for (k, v) in rs.labels().pairs() {
                let i = *labels.entry((k, v)).or_insert_with(|| {
                    lists.push(Vec::new());
                    lists.len() - 1
                });
                lists[i].push(at);
            }
        }
        Self {
            all,
            by_namespace,
            by_label,
            lists,
        }
    }

    /// The positions (in the input) of the RealServers of `namespace` that may match
    /// `selector`: those carrying its rarest `matchLabels` pair, or the whole namespace
    /// without `matchLabels`.
    pub fn candidates(&self, namespace: &str, selector: &LabelSelector) -> &[u32] {
        let labels = self.by_label.get(namespace);
        let rarest = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| {
                labels
                    .and_then(|l| l.get(&(k.as_str(), v.as_str())))
                    .map_or(&[][..], |&i| self.lists[i].as_slice())
            })
            .min_by_key(|list| list.len());
        match rarest {
            Some(list) => list,
            None => self
                .by_namespace
                .get(namespace)
                .map_or(&[][..], Vec::as_slice),
        }
    }

    /// The RealServers `selector` picks in `namespace`, in input order.
    pub fn select(
        &self,
        namespace: &str,
        selector: &LabelSelector,
    ) -> Result<Vec<&'a R>, SelectorError> {
        Ok(self
            .select_positions(namespace, selector)?
            .into_iter()
            .map(|at| self.all[at as usize])
            .collect())
    }

    /// [`RealServerIndex::select`] as positions in the input.
    pub fn select_positions(
        &self,
        namespace: &str,
        selector: &LabelSelector,
    ) -> Result<Vec<u32>, SelectorError> {
        select_among(
            &self.all,
            self.candidates(namespace, selector).iter().copied(),
            namespace,
            selector,
        )
    }
}

/// Those of the `candidates` (positions in `all`, ascending) that are in `namespace`
/// and match `selector`; an invalid selector is an error even with no candidates.
pub fn select_among<R: Selectable>(
    all: &[&R],
    candidates: impl IntoIterator<Item = u32>,
    namespace: &str,
    selector: &LabelSelector,
) -> Result<Vec<u32>, SelectorError> {
    // Check the selector itself first, so a typo is reported even with no RealServers.
    matches(selector, &LabelSet::default())?;
    Ok(candidates
        .into_iter()
        .filter(|&at| {
            let rs = all[at as usize];
            rs.namespace() == namespace && matches(selector, rs.labels()).unwrap_or(false)
        })
        .collect())
}
