//! The `device` verbs' argument structs, `device escrow` among them.

use std::path::PathBuf;

use argh::FromArgs;

#[derive(FromArgs)]
/// Devices.
#[argh(subcommand, name = "device")]
pub struct DeviceArgs {
    #[argh(subcommand)]
    pub command: DeviceCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum DeviceCommand {
    Add(DeviceAdd),
    List(DeviceList),
    Disable(DeviceDisable),
    Enable(DeviceEnable),
    Rotate(DeviceRotate),
    Retire(DeviceRetire),
    Tag(DeviceTag),
    Show(DeviceShow),
    Mode(DeviceModeArgs),
    Liveness(DeviceLiveness),
    Escrow(EscrowArgs),
}

#[derive(FromArgs)]
/// The device's liveness check: disabled once silent (no recovery asked) for longer than
/// --max-silence; "none" falls back to the org's setting. `device enable` restarts the
/// clock.
#[argh(subcommand, name = "liveness")]
pub struct DeviceLiveness {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// the longest silence (90s, 15m, 12h, 30d), or "none" for the org's
    #[argh(option)]
    pub max_silence: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Set tags on a device (KEY=VALUE…); approval groups match them.
#[argh(subcommand, name = "tag")]
pub struct DeviceTag {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// KEY=VALUE
    #[argh(positional)]
    pub tags: Vec<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// Add a device: prints its unlock URL and the thp to pin.
#[argh(subcommand, name = "add")]
pub struct DeviceAdd {
    /// the organisation
    #[argh(option)]
    pub org: String,
    #[argh(positional)]
    pub name: String,
    /// exchange key curve: P-256, P-384 or P-521 (default)
    #[argh(option)]
    pub curve: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// List devices.
#[argh(subcommand, name = "list")]
pub struct DeviceList {
    /// only this organisation
    #[argh(option)]
    pub org: Option<String>,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

/// One struct per device action verb: argh names a subcommand by its type.
macro_rules! device_action {
    ($type:ident, $name:literal, $doc:literal) => {
        #[derive(FromArgs)]
        #[doc = $doc]
        #[argh(subcommand, name = $name)]
        pub struct $type {
            /// ORG/DEVICE
            #[argh(positional)]
            pub device: String,
            /// print JSON
            #[argh(switch)]
            pub json: bool,
        }
    };
}

device_action!(
    DeviceDisable,
    "disable",
    "Refuse every recovery of a device."
);
device_action!(
    DeviceEnable,
    "enable",
    "Take part in a device's recoveries again."
);
device_action!(
    DeviceRotate,
    "rotate",
    "Advertise a new exchange key; the old ones still recover until the device is retired."
);
device_action!(
    DeviceRetire,
    "retire",
    "Destroy a device's exchange keys: its managed unlock path is gone for good."
);
device_action!(
    DeviceShow,
    "show",
    "Show one device, with its reported mode and header backup."
);

#[derive(FromArgs)]
/// Record the mode a device's volume is in (what its machine reports); sovereign retires
/// the device: its exchange keys and header backup are destroyed.
#[argh(subcommand, name = "mode")]
pub struct DeviceModeArgs {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// managed, managed+user or sovereign
    #[argh(positional)]
    pub mode: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs)]
/// A device's encrypted header backup (encrypted on the machine to the org's escrow key).
#[argh(subcommand, name = "escrow")]
pub struct EscrowArgs {
    #[argh(subcommand)]
    pub command: EscrowCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
pub enum EscrowCommand {
    Get(EscrowGet),
    Rm(EscrowRm),
}

#[derive(FromArgs)]
/// Write the backup's compact JWE to stdout or a file (created 0600).
#[argh(subcommand, name = "get")]
pub struct EscrowGet {
    /// ORG/DEVICE
    #[argh(positional)]
    pub device: String,
    /// write it to this file instead of stdout
    #[argh(option)]
    pub out: Option<PathBuf>,
    /// print JSON (with the JWE, unless --out)
    #[argh(switch)]
    pub json: bool,
}

device_action!(EscrowRm, "rm", "Delete a device's header backup for good.");
