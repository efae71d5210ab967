//! Organisations' webhooks.

use super::Postgres;
use crate::store::{Result, StoreError, Webhook, Webhooks, now};

impl Webhooks for Postgres {
    fn webhook_add(&self, org: &str, url: &str, secret: &str) -> Result<i64> {
        let org_id = self.org_id_of(org)?;
        self.with(|c| {
            c.query_one(
                "INSERT INTO webhooks (org_id, url, secret, created_at) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                &[&org_id, &url, &secret, &now()],
            )
            .map(|r| r.get(0))
        })
    }

    fn webhooks(&self, org: &str) -> Result<Vec<Webhook>> {
        let org_id = self.org_id_of(org)?;
        let rows = self.with(|c| {
            c.query(
                "SELECT id, url, secret, created_at FROM webhooks WHERE org_id = $1 ORDER BY id",
                &[&org_id],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| Webhook {
                id: r.get(0),
                url: r.get(1),
                secret: r.get(2),
                created_at: r.get(3),
            })
            .collect())
    }

    fn webhook_rm(&self, org: &str, id: i64) -> Result<()> {
        let org_id = self.org_id_of(org)?;
        let n = self.with(|c| {
            c.execute(
                "DELETE FROM webhooks WHERE id = $1 AND org_id = $2",
                &[&id, &org_id],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("webhook {id} of {org:?}")))
        }
    }
}
