//! Checks on every id and value before it reaches a program's argv, a
//! socket's command line or an HTTP header. Each error names the field.
//!
//! Commands run without a shell, so quoting is not the danger; what is: a
//! value starting with `-` read as an option, a newline ending HAProxy's
//! one-command line early and starting another, `;` chaining runtime-API
//! commands, a `,` or `=` smuggling a second key into `scontrol update`.
//! The rules are therefore narrower than what each system would accept.

use super::ExecError;
use std::collections::BTreeMap;

/// A Slurm job id: decimal digits only (array and het-job suffixes are not
/// accepted: keel acts on whole jobs).
pub fn job_id(field: &str, value: &str) -> Result<u64, ExecError> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ExecError::invalid(
            field,
            value,
            "a job id is decimal digits only",
        ));
    }
    match value.parse::<u64>() {
        Ok(0) => Err(ExecError::invalid(field, value, "job id 0 does not exist")),
        Ok(n) => Ok(n),
        Err(_) => Err(ExecError::invalid(field, value, "job id out of range")),
    }
}

/// A name of the `[A-Za-z0-9._-]+` kind: Slurm node names, HAProxy backend
/// and server names. A leading `-` is refused too (it would read as an option).
pub fn simple_name(field: &str, value: &str) -> Result<(), ExecError> {
    if value.is_empty() {
        return Err(ExecError::invalid(field, value, "empty"));
    }
    if value.len() > 255 {
        return Err(ExecError::invalid(field, value, "longer than 255 bytes"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ExecError::invalid(
            field,
            value,
            format!("{bad:?} is not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    if value.starts_with('-') {
        return Err(ExecError::invalid(field, value, "must not start with '-'"));
    }
    Ok(())
}

/// A Slurm node name.
pub fn node_name(field: &str, value: &str) -> Result<(), ExecError> {
    simple_name(field, value)
}

/// A Linux network interface name, by the kernel's rules (`dev_valid_name`:
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace), narrowed to
/// printable ASCII and no leading `-` because it goes on ethtool's argv.
pub fn ifname(field: &str, value: &str) -> Result<(), ExecError> {
    if value.is_empty() {
        return Err(ExecError::invalid(field, value, "empty"));
    }
    if value.len() > 15 {
        return Err(ExecError::invalid(
            field,
            value,
            "longer than 15 bytes (IFNAMSIZ - 1)",
        ));
    }
    if value == "." || value == ".." {
        return Err(ExecError::invalid(
            field,
            value,
            "not a valid interface name",
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':'))
    {
        return Err(ExecError::invalid(
            field,
            value,
            format!("{bad:?} is not allowed in an interface name"),
        ));
    }
    if value.starts_with('-') {
        return Err(ExecError::invalid(field, value, "must not start with '-'"));
    }
    Ok(())
}

/// An idempotency key: it is stored, logged and sent as an HTTP header, so
/// printable ASCII only.
pub fn key(value: &str) -> Result<(), ExecError> {
    let field = "idempotency_key";
    if value.is_empty() {
        return Err(ExecError::invalid(field, value, "empty"));
    }
    if value.len() > 200 {
        return Err(ExecError::invalid(field, value, "longer than 200 bytes"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(ExecError::invalid(
            field,
            value,
            "only printable ASCII is allowed",
        ));
    }
    Ok(())
}

/// Free text that goes into one argv element (a drain reason): printable,
/// no control characters, bounded.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ExecError> {
    if value.trim().is_empty() {
        return Err(ExecError::invalid(field, value, "empty"));
    }
    if value.len() > max {
        return Err(ExecError::invalid(
            field,
            value,
            format!("longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ExecError::invalid(
            field,
            value,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// An unsigned integer parameter within `min..=max`.
pub fn uint(field: &str, value: &str, min: u64, max: u64) -> Result<u64, ExecError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ExecError::invalid(field, value, "not a whole number"));
    }
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ExecError::invalid(
            field,
            value,
            format!("must be between {min} and {max}"),
        )),
    }
}

/// Refuses parameters the action does not know, so that a typo in a policy
/// (`rx_rign`) fails loudly instead of silently doing less.
pub fn known_params(params: &BTreeMap<String, String>, known: &[&str]) -> Result<(), ExecError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ExecError::invalid(
            "params",
            k,
            if known.is_empty() {
                "this action takes no parameters".to_string()
            } else {
                format!("unknown parameter (known: {})", known.join(", "))
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ExecError) -> String {
        match e {
            ExecError::Invalid { field, .. } => field,
            e => panic!("not Invalid: {e}"),
        }
    }

    #[test]
    fn job_ids_are_digits_only() {
        assert_eq!(job_id("target", "12345").unwrap(), 12345);
        for bad in [
            "",
            "12;rm",
            "-1",
            "1_2",
            "12 ",
            "+3",
            "0",
            "99999999999999999999",
        ] {
            assert_eq!(field_of(job_id("target", bad).unwrap_err()), "target");
        }
    }

    #[test]
    fn names_allow_the_simple_set_only() {
        assert!(simple_name("node", "gpu-node.01_a").is_ok());
        for bad in ["", "a b", "a,b", "a=b", "a\nb", "-x", "a/b", "n[1-2]", "é"] {
            let e = simple_name("node", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid node "), "{e}");
        }
    }

    #[test]
    fn interface_names_follow_linux() {
        for ok in ["eth0", "ens1f0np0", "veth-a.1", "a@b", "123456789012345"] {
            assert!(ifname("target", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "1234567890123456",
            "-x",
            "a\tb",
        ] {
            assert!(ifname("target", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_text_refuse_control_characters() {
        assert!(key("act-17/retry").is_ok());
        assert!(key("a\r\nX-Evil: 1").is_err());
        assert!(text("reason", "keel: straggler on n1", 200).is_ok());
        assert!(text("reason", "a\nb", 200).is_err());
        assert!(text("reason", "  ", 200).is_err());
    }

    #[test]
    fn uints_have_bounds() {
        assert_eq!(uint("weight", "256", 0, 256).unwrap(), 256);
        assert!(uint("weight", "257", 0, 256).is_err());
        assert!(uint("weight", "-1", 0, 256).is_err());
        assert!(uint("weight", "1e3", 0, 256).is_err());
    }

    #[test]
    fn unknown_parameters_are_named() {
        let p: BTreeMap<String, String> = [("rx_rign".to_string(), "1".to_string())].into();
        let e = known_params(&p, &["rx_ring"]).unwrap_err().to_string();
        assert!(e.contains("rx_rign") && e.contains("rx_ring"), "{e}");
    }
}
