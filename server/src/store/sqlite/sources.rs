//! Source allowlists, the org's require-source setting, network-access lists and tags.

use rusqlite::{OptionalExtension, params};

use super::{Sqlite, pairs, texts};
use crate::net::Cidr;
use crate::store::{Result, Sources, StoreError};

impl Sqlite {
    fn netlist_id(&self, org_id: i64, org: &str, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT id FROM netlists WHERE org_id = ?1 AND name = ?2",
                params![org_id, name],
                |r| r.get(0),
            )
            .optional()
        })?
        .ok_or_else(|| StoreError::NotFound(format!("network-access list {org}/{name}")))
    }
}

impl Sources for Sqlite {
    fn set_require_source(&self, org: &str, required: bool) -> Result<()> {
        let id = self.org_id_of(org)?;
        self.with(|c| {
            c.execute(
                "UPDATE orgs SET require_source = ?1 WHERE id = ?2",
                params![required, id],
            )
            .map(|_| ())
        })
    }

    fn change_sources(&self, org: &str, device: &str, cidrs: &[Cidr], add: bool) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let tx = c.transaction()?;
            for cidr in cidrs {
                let sql = if add {
                    "INSERT OR IGNORE INTO device_sources (device_id, cidr) VALUES (?1, ?2)"
                } else {
                    "DELETE FROM device_sources WHERE device_id = ?1 AND cidr = ?2"
                };
                tx.execute(sql, params![id, cidr.to_string()])?;
            }
            tx.commit()
        })
    }

    fn sources(&self, org: &str, device: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let own = texts(
                &mut c.prepare(
                    "SELECT cidr FROM device_sources WHERE device_id = ?1 ORDER BY cidr",
                )?,
                id,
            )?;
            let lists = texts(
                &mut c.prepare(
                    "SELECT n.name FROM device_netlists dn JOIN netlists n ON n.id = dn.netlist_id
                     WHERE dn.device_id = ?1 ORDER BY n.name",
                )?,
                id,
            )?;
            Ok((own, lists))
        })
    }

    fn set_tags(&self, org: &str, device: &str, tags: &[(String, String)]) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let tx = c.transaction()?;
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO device_tags (device_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
                    params![id, k, v],
                )?;
            }
            tx.commit()
        })
    }

    fn tags(&self, org: &str, device: &str) -> Result<Vec<(String, String)>> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            pairs(
                &mut c.prepare(
                    "SELECT key, value FROM device_tags WHERE device_id = ?1 ORDER BY key",
                )?,
                id,
            )
        })
    }

    fn netlist_add(&self, org: &str, name: &str, cidrs: &[Cidr]) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO netlists (org_id, name) VALUES (?1, ?2)",
                params![org_id, name],
            )?;
            let id: i64 = tx.query_row(
                "SELECT id FROM netlists WHERE org_id = ?1 AND name = ?2",
                params![org_id, name],
                |r| r.get(0),
            )?;
            for cidr in cidrs {
                tx.execute(
                    "INSERT OR IGNORE INTO netlist_entries (netlist_id, cidr) VALUES (?1, ?2)",
                    params![id, cidr.to_string()],
                )?;
            }
            tx.commit()
        })
    }

    fn netlist_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        let id = self.netlist_id(org_id, org, name)?;
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM device_netlists WHERE netlist_id = ?1",
                params![id],
            )?;
            tx.execute(
                "DELETE FROM netlist_entries WHERE netlist_id = ?1",
                params![id],
            )?;
            tx.execute("DELETE FROM netlists WHERE id = ?1", params![id])?;
            tx.commit()
        })
    }

    fn netlists(&self, org: &str) -> Result<Vec<(String, Vec<String>)>> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let names = c
                .prepare("SELECT id, name FROM netlists WHERE org_id = ?1 ORDER BY name")?
                .query_map(params![org_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut entries =
                c.prepare("SELECT cidr FROM netlist_entries WHERE netlist_id = ?1 ORDER BY cidr")?;
            names
                .into_iter()
                .map(|(id, name)| Ok((name, texts(&mut entries, id)?)))
                .collect()
        })
    }

    fn netlist_attach(&self, org: &str, device: &str, name: &str, attach: bool) -> Result<()> {
        let (id, org_id) = self.device_row(org, device)?;
        let list = self.netlist_id(org_id, org, name)?;
        self.with(|c| {
            let sql = if attach {
                "INSERT OR IGNORE INTO device_netlists (device_id, netlist_id) VALUES (?1, ?2)"
            } else {
                "DELETE FROM device_netlists WHERE device_id = ?1 AND netlist_id = ?2"
            };
            c.execute(sql, params![id, list]).map(|_| ())
        })
    }
}
