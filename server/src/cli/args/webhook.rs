//! The `webhook` verbs' arguments.

use argh::FromArgs;

#[derive(FromArgs)]
/// Webhooks told of every request that waits for approval (signed, see the README).
#[argh(subcommand, name = "webhook")]
pub struct WebhookArgs {
    #[argh(subcommand)]
    pub command: WebhookCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum WebhookCommand {
    Add(WebhookAdd),
    List(WebhookListArgs),
    Rm(WebhookRm),
}

#[derive(FromArgs)]
/// Add a webhook; prints its signing secret, once, as the last line.
#[argh(subcommand, name = "add")]
pub struct WebhookAdd {
    /// the organisation
    #[argh(option)]
    pub org: String,
    /// where to POST (http or https)
    #[argh(positional)]
    pub url: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// An organisation's webhooks (never their secrets).
#[argh(subcommand, name = "list")]
pub struct WebhookListArgs {
    /// the organisation
    #[argh(option)]
    pub org: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Remove a webhook.
#[argh(subcommand, name = "rm")]
pub struct WebhookRm {
    /// the organisation
    #[argh(option)]
    pub org: String,
    #[argh(positional)]
    pub id: i64,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}
