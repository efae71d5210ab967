//! The command lines: clevis's own (`encrypt`, `decrypt`, `luks VERB` with clevis 19's
//! options and meanings) and ours (the same verbs without `luks`, and the boot modes).
//! One argument type per verb, shared by both spellings.

use std::path::PathBuf;

use argh::FromArgs;

#[derive(FromArgs)]
/// Network-bound disk encryption, compatible with clevis: pins, LUKS1/LUKS2 bindings, and
/// unlock at boot.
pub struct Args {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum Command {
    Encrypt(EncryptArgs),
    Decrypt(DecryptArgs),
    Luks(LuksArgs),
    Bind(BindArgs),
    Unbind(UnbindArgs),
    List(ListArgs),
    Pass(PassArgs),
    Open(OpenArgs),
    Report(ReportArgs),
    Regen(RegenArgs),
    Edit(EditArgs),
    Boot(BootArgs),
    Agent(AgentArgs),
    Passfifo(PassfifoArgs),
    NeedsNetwork(NeedsNetworkArgs),
    NeedsTpm2(NeedsTpm2Args),
    Mode(ModeArgs),
    Header(HeaderArgs),
}

#[derive(FromArgs)]
/// clevis luks: bindings of LUKS1 and LUKS2 volumes, with clevis's options.
#[argh(subcommand, name = "luks")]
pub struct LuksArgs {
    #[argh(subcommand)]
    pub command: LuksCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum LuksCommand {
    Bind(BindArgs),
    Unbind(UnbindArgs),
    List(ListArgs),
    Pass(PassArgs),
    Report(ReportArgs),
    Regen(RegenArgs),
    Edit(EditArgs),
    Unlock(UnlockArgs),
}

/// Short options that take a value, for splitting getopt clusters such as `-k-` or `-qr`.
pub const VALUE_OPTIONS: &str = "dsktecno";

#[derive(FromArgs)]
/// Bind a LUKS volume to a pin: a new random key in a new keyslot, its JWE in a LUKS2
/// token or a LUKS1 luksmeta slot.
#[argh(subcommand, name = "bind")]
pub struct BindArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the keyslot to use (default: the first free one)
    #[argh(option, short = 's')]
    pub slot: Option<u32>,
    /// file with an existing passphrase, or - for one line of standard input (default:
    /// asked on the terminal, or one line of standard input)
    #[argh(option, short = 'k')]
    pub key: Option<String>,
    /// the LUKS2 token id for the binding
    #[argh(option, short = 't')]
    pub token: Option<u32>,
    /// a LUKS2 keyring token whose key is the existing passphrase
    #[argh(option, short = 'e')]
    pub existing_token: Option<u32>,
    /// trust the advertisement without asking (implies -f)
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// create a LUKS1 volume's luksmeta header without asking
    #[argh(switch, short = 'f')]
    pub force: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
    /// the pin: tang, sss or null
    #[argh(positional)]
    pub pin: String,
    /// the pin's JSON configuration
    #[argh(positional)]
    pub config: String,
}

#[derive(FromArgs)]
/// Remove a clevis binding: its keyslot and its token or luksmeta slot. Keyslots that no
/// clevis binding holds, and the last keyslot, are refused.
#[argh(subcommand, name = "unbind")]
pub struct UnbindArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    pub slot: u32,
    /// do not ask for confirmation
    #[argh(switch, short = 'f')]
    pub force: bool,
}

#[derive(FromArgs)]
/// List the bindings of a volume as `SLOT: PIN 'CONFIG'`.
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// only this keyslot
    #[argh(option, short = 's')]
    pub slot: Option<u32>,
}

#[derive(FromArgs)]
/// Print the passphrase a binding recovers.
#[argh(subcommand, name = "pass")]
pub struct PassArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    pub slot: u32,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Report bound tang keys that the servers no longer advertise (exit 1 if any).
#[argh(subcommand, name = "report")]
pub struct ReportArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    pub slot: u32,
    /// do not offer to regenerate
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// regenerate the binding if keys were rotated
    #[argh(switch, short = 'r')]
    pub regen: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Rebind a keyslot to the servers' current keys, keeping its number.
#[argh(subcommand, name = "regen")]
pub struct RegenArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    pub slot: u32,
    /// do not ask; if the bound signing key no longer vouches for a server's keys, trust
    /// its current advertisement (as clevis regen does)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
    /// trust new advertisements without asking
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// file with an existing passphrase, or - for one line of standard input, used when
    /// no binding can be recovered
    #[argh(option, short = 'k')]
    pub key: Option<String>,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Change the pin config of a binding, keeping its keyslot.
#[argh(subcommand, name = "edit")]
pub struct EditArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the bound keyslot
    #[argh(option, short = 's')]
    pub slot: u32,
    /// the new config (default: edit the current one in $EDITOR)
    #[argh(option, short = 'c')]
    pub config: Option<String>,
    /// rebind even if the config is unchanged
    #[argh(switch, short = 'f')]
    pub force: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Recover a binding and activate the volume through its own keyslot (clevis luks unlock).
#[argh(subcommand, name = "unlock")]
pub struct UnlockArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the device-mapper name (default luks-UUID)
    #[argh(option, short = 'n')]
    pub name: Option<String>,
    /// activation options as cryptsetup spells them: --readonly, --allow-discards
    #[argh(option, short = 'o')]
    pub options: Option<String>,
    /// only test that this keyslot's binding recovers its key; activate nothing
    #[argh(option, short = 't')]
    pub test_slot: Option<u32>,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Recover a binding and activate the volume through its own keyslot.
#[argh(subcommand, name = "open")]
pub struct OpenArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the device-mapper name (default luks-UUID)
    #[argh(option, short = 'n')]
    pub name: Option<String>,
    /// activation options as cryptsetup spells them: --readonly, --allow-discards
    #[argh(option, short = 'o')]
    pub options: Option<String>,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

impl From<OpenArgs> for UnlockArgs {
    fn from(a: OpenArgs) -> UnlockArgs {
        UnlockArgs {
            device: a.device,
            name: a.name,
            options: a.options,
            test_slot: None,
            timeout: a.timeout,
        }
    }
}

#[derive(FromArgs)]
/// Encrypt standard input to a compact JWE on standard output, as `clevis encrypt`.
#[argh(subcommand, name = "encrypt")]
pub struct EncryptArgs {
    /// the pin: tang, sss or null
    #[argh(positional)]
    pub pin: String,
    /// the pin's JSON configuration
    #[argh(positional)]
    pub config: String,
    /// trust the advertisement without asking
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Decrypt a Clevis JWE from standard input to standard output, as `clevis decrypt`.
#[argh(subcommand, name = "decrypt")]
pub struct DecryptArgs {
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Standalone boot: open every LUKS device with a clevis binding, while a passphrase
/// typed on standard input races the network.
#[argh(subcommand, name = "boot")]
pub struct BootArgs {
    /// a device to open (default: every block device with a clevis binding)
    #[argh(option, short = 'd')]
    pub device: Vec<PathBuf>,
    /// do not read a passphrase from standard input
    #[argh(switch)]
    pub no_prompt: bool,
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// systemd password agent: answer systemd-cryptsetup's requests for bound devices.
#[argh(subcommand, name = "agent")]
pub struct AgentArgs {
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// initramfs-tools: feed cryptroot's askpass fifo for the bound crypttab entries.
#[argh(subcommand, name = "passfifo")]
pub struct PassfifoArgs {
    /// the initramfs crypttab (default /cryptroot/crypttab)
    #[argh(option, default = "PathBuf::from(\"/cryptroot/crypttab\")")]
    pub crypttab: PathBuf,
    /// seconds for each server request (default 10)
    #[argh(option, default = "10")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Exit 0 if a binding on the devices needs the network at boot (tang, also inside sss),
/// 1 if none does, 2 if that cannot be told. Prints nothing; for image generators.
#[argh(subcommand, name = "needs-network")]
pub struct NeedsNetworkArgs {
    /// a LUKS device or image (repeat for more)
    #[argh(option, short = 'd')]
    pub device: Vec<PathBuf>,
}

#[derive(FromArgs)]
/// Exit 0 if a binding on the devices uses the tpm2 pin (also inside sss), 1 if none does,
/// 2 if that cannot be told. Prints nothing; image generators then ship nbde-tpm2.
#[argh(subcommand, name = "needs-tpm2")]
pub struct NeedsTpm2Args {
    /// a LUKS device or image (repeat for more)
    #[argh(option, short = 'd')]
    pub device: Vec<PathBuf>,
}

#[derive(FromArgs)]
/// Show a volume's mode (managed, managed+user, sovereign), or change it. `managed+user`
/// enrols a user key (or, from sovereign, binds PIN CONFIG again with the user key);
/// `sovereign` removes every network binding, places the marker that stops automatic
/// unlock, and has the server destroy the device's keys; `managed --force` removes the
/// user keys once the network has opened the volume.
#[argh(subcommand, name = "mode")]
pub struct ModeArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// MODE [PIN CONFIG]: the mode to change to (none: show the mode), and for
    /// managed+user from sovereign or unmanaged, the pin and JSON config of a new network
    /// binding, as for bind
    #[argh(positional)]
    pub words: Vec<String>,
    /// file with the user key, or - for one line of standard input (default: asked on the
    /// terminal). For managed+user with no user key yet, the new passphrase.
    #[argh(option, short = 'k')]
    pub key: Option<String>,
    /// enrol a generated recovery key, printed once, instead of a passphrase
    #[argh(switch)]
    pub recovery_key: bool,
    /// managed: remove the user keys
    #[argh(switch, short = 'f')]
    pub force: bool,
    /// the operator token for nbde-server (default $NBDE_TOKEN)
    #[argh(option)]
    pub token: Option<String>,
    /// reach nbde-server at this base URL instead of the binding's (default $NBDE_SERVER)
    #[argh(option)]
    pub server: Option<String>,
    /// time of a new user keyslot's Argon2id in ms, as cryptsetup's --iter-time (default 2000)
    #[argh(option, default = "2000")]
    pub iter_time: u32,
    /// memory of a new user keyslot's Argon2id in KiB, as cryptsetup's --pbkdf-memory
    /// (default 1048576)
    #[argh(option, default = "1048576")]
    pub pbkdf_memory: u32,
    /// trust a new binding's advertisement without asking
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// print JSON (showing the mode)
    #[argh(switch)]
    pub json: bool,
    /// seconds for each server request (default 15)
    #[argh(option, default = "15")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// The LUKS header in escrow: sealed on this machine to the organisation's escrow key,
/// which the server does not have.
#[argh(subcommand, name = "header")]
pub struct HeaderArgs {
    #[argh(subcommand)]
    pub command: HeaderCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum HeaderCommand {
    Escrow(HeaderEscrowArgs),
    Restore(HeaderRestoreArgs),
    Keygen(HeaderKeygenArgs),
}

#[derive(FromArgs)]
/// Seal the header to the org's escrow key and upload it to the bound nbde-server.
#[argh(subcommand, name = "escrow")]
pub struct HeaderEscrowArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the device URL (BASE/o/ORG/d/DEVICE; default: the one the binding names)
    #[argh(option)]
    pub url: Option<String>,
    /// reach nbde-server at this base URL instead of the binding's (default $NBDE_SERVER)
    #[argh(option)]
    pub server: Option<String>,
    /// the operator token for nbde-server (default $NBDE_TOKEN)
    #[argh(option)]
    pub token: Option<String>,
    /// seconds for each server request (default 60)
    #[argh(option, default = "60")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Fetch the escrowed header, open it with the escrow private key, check the UUID and
/// restore it onto the device.
#[argh(subcommand, name = "restore")]
pub struct HeaderRestoreArgs {
    /// the LUKS device or image
    #[argh(option, short = 'd')]
    pub device: PathBuf,
    /// the escrow private key (a JWK file)
    #[argh(option)]
    pub escrow_key: PathBuf,
    /// the device URL (BASE/o/ORG/d/DEVICE; default: the binding's, if the header reads)
    #[argh(option)]
    pub url: Option<String>,
    /// reach nbde-server at this base URL instead of the binding's (default $NBDE_SERVER)
    #[argh(option)]
    pub server: Option<String>,
    /// the operator token for nbde-server (default $NBDE_TOKEN)
    #[argh(option)]
    pub token: Option<String>,
    /// seconds for each server request (default 60)
    #[argh(option, default = "60")]
    pub timeout: u64,
}

#[derive(FromArgs)]
/// Make an escrow key pair: the private JWK into a new file (keep it offline), the public
/// one on standard output for `nbde-server org escrow-key`.
#[argh(subcommand, name = "keygen")]
pub struct HeaderKeygenArgs {
    /// where to write the private JWK (must not exist)
    #[argh(option)]
    pub private: PathBuf,
    /// the curve: P-256, P-384 or P-521 (default)
    #[argh(option, default = "String::from(\"P-521\")")]
    pub curve: String,
}
