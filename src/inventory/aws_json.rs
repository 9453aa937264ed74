//! The AWS CLI JSON importer: unmodified output of `aws ec2 describe-security-groups`,
//! `describe-network-interfaces`, `describe-vpcs`, `describe-subnets`,
//! `describe-managed-prefix-lists` and `get-managed-prefix-list-entries`. Each file is
//! recognised by its top-level key.

use std::path::Path;

use serde::Deserialize;

use super::aws::{
    AwsInventory, AwsSubnet, ManagedPrefixList, NetworkInterface, PrefixListEntry, SecurityGroup,
    Vpc,
};
use super::{Inventory, InventoryError};
use crate::config::AwsJsonInput;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AnyOutput {
    security_groups: Option<Vec<SecurityGroup>>,
    network_interfaces: Option<Vec<NetworkInterface>>,
    vpcs: Option<Vec<Vpc>>,
    subnets: Option<Vec<AwsSubnet>>,
    prefix_lists: Option<Vec<ManagedPrefixList>>,
    entries: Option<Vec<PrefixListEntry>>,
}

/// Read every file into one inventory.
pub fn load(files: &[AwsJsonInput]) -> Result<Inventory, InventoryError> {
    let mut inv = Inventory::default();
    let mut listed_prefix_lists: Vec<String> = Vec::new();
    for f in files {
        let text = super::read(&f.path)?;
        let part = convert_file(
            &mut listed_prefix_lists,
            &text,
            &f.path,
            f.prefix_list.as_deref(),
        )?;
        inv.networks.extend(part.networks);
        inv.subnets.extend(part.subnets);
        inv.groups.extend(part.groups);
        inv.hosts.extend(part.hosts);
        inv.prefix_lists.extend(part.prefix_lists);
    }
    // Prefix lists described but without an entries file still exist (with no entries known):
    // the leader reports rules that use them.
    for id in listed_prefix_lists {
        if !inv.prefix_lists.iter().any(|p| p.id == id) {
            tracing::warn!(prefix_list = %id, "no get-managed-prefix-list-entries output for this prefix list: it matches nothing");
        }
    }
    Ok(inv)
}

/// Parse one AWS CLI output held in memory (`path` names it in errors and, for
/// `get-managed-prefix-list-entries` output, may name its prefix list).
pub fn parse(
    text: &str,
    path: &Path,
    prefix_list: Option<&str>,
) -> Result<Inventory, InventoryError> {
    convert_file(&mut Vec::new(), text, path, prefix_list)
}

/// Read one file's shapes and convert them on their own, so that a bad value (a prefix that
/// does not parse, a port out of range) is reported with the file it is in. The conversion is
/// per shape, so converting file by file and concatenating equals converting all at once.
fn convert_file(
    listed: &mut Vec<String>,
    text: &str,
    path: &Path,
    prefix_list: Option<&str>,
) -> Result<Inventory, InventoryError> {
    let mut aws = AwsInventory::default();
    add_file(&mut aws, listed, text, path, prefix_list)?;
    aws.into_inventory()
        .map_err(|e| InventoryError::Invalid(format!("{}: {e}", path.display())))
}

fn add_file(
    aws: &mut AwsInventory,
    listed: &mut Vec<String>,
    text: &str,
    path: &Path,
    prefix_list: Option<&str>,
) -> Result<(), InventoryError> {
    let name = path.display();
    let out: AnyOutput = serde_json::from_str(text)
        .map_err(|e| InventoryError::Invalid(format!("{name}:{}:{}: {e}", e.line(), e.column())))?;
    let mut recognised = false;
    if let Some(v) = out.security_groups {
        aws.security_groups.extend(v);
        recognised = true;
    }
    if let Some(v) = out.network_interfaces {
        aws.interfaces.extend(v);
        recognised = true;
    }
    if let Some(v) = out.vpcs {
        aws.vpcs.extend(v);
        recognised = true;
    }
    if let Some(v) = out.subnets {
        aws.subnets.extend(v);
        recognised = true;
    }
    if let Some(v) = out.prefix_lists {
        listed.extend(v.into_iter().map(|p| p.prefix_list_id));
        recognised = true;
    }
    if let Some(entries) = out.entries {
        let id = match prefix_list {
            Some(id) => id.to_string(),
            None => prefix_list_id_from_name(path).ok_or_else(|| {
                InventoryError::Invalid(format!(
                    "{name}: get-managed-prefix-list-entries output does not say which prefix list it is; \
                     name the file after it (pl-0abc.json) or write {{path: {name}, prefix_list: pl-...}} in inventory.aws_json"
                ))
            })?,
        };
        aws.prefix_lists.push((id, entries));
        recognised = true;
    }
    if !recognised {
        return Err(InventoryError::Invalid(format!(
            "{name}: not a recognised AWS CLI output (expected a top-level SecurityGroups, NetworkInterfaces, \
             Vpcs, Subnets, PrefixLists or Entries key)"
        )));
    }
    Ok(())
}

fn prefix_list_id_from_name(path: &Path) -> Option<String> {
    let stem = path.file_name()?.to_str()?;
    let start = stem.find("pl-")?;
    let id: String = stem[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (id.len() > 3).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_list_id_from_file_name() {
        assert_eq!(
            prefix_list_id_from_name(Path::new("/x/pl-0abc123.json")).as_deref(),
            Some("pl-0abc123")
        );
        assert_eq!(prefix_list_id_from_name(Path::new("/x/entries.json")), None);
    }

    #[test]
    fn unknown_file_is_named() {
        let mut aws = AwsInventory::default();
        let e = add_file(
            &mut aws,
            &mut vec![],
            r#"{"Reservations": []}"#,
            Path::new("i.json"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("i.json:"), "{e}");
    }

    #[test]
    fn bad_value_names_the_file() {
        let text = r#"{"SecurityGroups": [{"GroupId": "sg-1", "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/33"}]}]}]}"#;
        let e = convert_file(&mut vec![], text, Path::new("/x/sgs.json"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/x/sgs.json: security group sg-1 IpPermissions[0]:"),
            "{e}"
        );
    }

    #[test]
    fn json_syntax_error_has_line() {
        let mut aws = AwsInventory::default();
        let e = add_file(
            &mut aws,
            &mut vec![],
            "{\n\"Vpcs\": [\n,]}",
            Path::new("v.json"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("v.json:3:"), "{e}");
    }
}
