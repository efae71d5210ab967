//! Source allowlists, the org's require-source setting, network-access lists and tags.

use super::{Postgres, pairs, texts};
use crate::net::Cidr;
use crate::store::{Result, Sources, StoreError};

impl Postgres {
    fn netlist_id(&self, org_id: i64, org: &str, name: &str) -> Result<i64> {
        self.with(|c| {
            c.query_opt(
                "SELECT id FROM netlists WHERE org_id = $1 AND name = $2",
                &[&org_id, &name],
            )
        })?
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::NotFound(format!("network-access list {org}/{name}")))
    }
}

impl Sources for Postgres {
    fn set_require_source(&self, org: &str, required: bool) -> Result<()> {
        let id = self.org_id_of(org)?;
        self.with(|c| {
            c.execute(
                "UPDATE orgs SET require_source = $1 WHERE id = $2",
                &[&required, &id],
            )
            .map(|_| ())
        })
    }

    fn change_sources(&self, org: &str, device: &str, cidrs: &[Cidr], add: bool) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            let sql = if add {
                "INSERT INTO device_sources (device_id, cidr) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM device_sources WHERE device_id = $1 AND cidr = $2"
            };
            for cidr in cidrs {
                tx.execute(sql, &[&id, &cidr.to_string()])?;
            }
            tx.commit()
        })
    }

    fn sources(&self, org: &str, device: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let own = texts(c.query(
                "SELECT cidr FROM device_sources WHERE device_id = $1 ORDER BY cidr",
                &[&id],
            )?);
            let lists = texts(c.query(
                "SELECT n.name FROM device_netlists dn JOIN netlists n ON n.id = dn.netlist_id
                 WHERE dn.device_id = $1 ORDER BY n.name",
                &[&id],
            )?);
            Ok((own, lists))
        })
    }

    fn set_tags(&self, org: &str, device: &str, tags: &[(String, String)]) -> Result<()> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO device_tags (device_id, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value",
                    &[&id, k, v],
                )?;
            }
            tx.commit()
        })
    }

    fn tags(&self, org: &str, device: &str) -> Result<Vec<(String, String)>> {
        let (id, _) = self.device_row(org, device)?;
        self.with(|c| {
            c.query(
                "SELECT key, value FROM device_tags WHERE device_id = $1 ORDER BY key",
                &[&id],
            )
            .map(pairs)
        })
    }

    fn netlist_add(&self, org: &str, name: &str, cidrs: &[Cidr]) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO netlists (org_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&org_id, &name],
            )?;
            let id: i64 = tx
                .query_one(
                    "SELECT id FROM netlists WHERE org_id = $1 AND name = $2",
                    &[&org_id, &name],
                )?
                .get(0);
            for cidr in cidrs {
                tx.execute(
                    "INSERT INTO netlist_entries (netlist_id, cidr) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&id, &cidr.to_string()],
                )?;
            }
            tx.commit()
        })
    }

    fn netlist_rm(&self, org: &str, name: &str) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        let id = self.netlist_id(org_id, org, name)?;
        // Entries and attachments go with the list (ON DELETE CASCADE).
        self.with(|c| {
            c.execute("DELETE FROM netlists WHERE id = $1", &[&id])
                .map(|_| ())
        })
    }

    fn netlists(&self, org: &str) -> Result<Vec<(String, Vec<String>)>> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let names = tx.query(
                "SELECT id, name FROM netlists WHERE org_id = $1 ORDER BY name",
                &[&org_id],
            )?;
            let mut out = Vec::with_capacity(names.len());
            for n in &names {
                let id: i64 = n.get(0);
                let entries = texts(tx.query(
                    "SELECT cidr FROM netlist_entries WHERE netlist_id = $1 ORDER BY cidr",
                    &[&id],
                )?);
                out.push((n.get(1), entries));
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn netlist_attach(&self, org: &str, device: &str, name: &str, attach: bool) -> Result<()> {
        let (id, org_id) = self.device_row(org, device)?;
        let list = self.netlist_id(org_id, org, name)?;
        self.with(|c| {
            let sql = if attach {
                "INSERT INTO device_netlists (device_id, netlist_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM device_netlists WHERE device_id = $1 AND netlist_id = $2"
            };
            c.execute(sql, &[&id, &list]).map(|_| ())
        })
    }
}
