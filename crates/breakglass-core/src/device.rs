//! One device account, as one workbook row.

use crate::secret::Secret;

/// The workbook's column headers, in their fixed order (DESIGN.md §1).
pub const COLUMNS: [&str; 12] = [
    "Provider",
    "Device name",
    "Protocol",
    "Public IP address",
    "Private IP address",
    "URL",
    "Port",
    "Access type",
    "Account",
    "Password",
    "PEM file name",
    "Extra credential",
];

/// One device account: the 12 columns, all kept as text exactly as the
/// inventory holds them (a port `0022` stays `0022`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRow {
    /// Cloud or hosting provider.
    pub provider: String,
    /// Device (server) name; the sort key.
    pub device_name: String,
    /// SSH, RDP, VNC, a database protocol...
    pub protocol: String,
    /// Public IP address.
    pub public_ip: String,
    /// Private IP address.
    pub private_ip: String,
    /// URL, for web-based access.
    pub url: String,
    /// Port, as text.
    pub port: String,
    /// Access type (e.g. password, key).
    pub access_type: String,
    /// Login account; the second sort key.
    pub account: String,
    /// The login password.
    pub password: Secret,
    /// Name of the PEM key file, if the login uses one.
    pub pem_file_name: String,
    /// Any further credential (passphrase, token, key material).
    pub extra_credential: Secret,
}

impl DeviceRow {
    /// The 12 cell values in [`COLUMNS`] order. Exposes the secrets: call it
    /// only to write the workbook.
    pub fn cells(&self) -> [&str; 12] {
        [
            &self.provider,
            &self.device_name,
            &self.protocol,
            &self.public_ip,
            &self.private_ip,
            &self.url,
            &self.port,
            &self.access_type,
            &self.account,
            self.password.expose(),
            &self.pem_file_name,
            self.extra_credential.expose(),
        ]
    }

    /// A row from the 12 cell values in [`COLUMNS`] order (the inverse of
    /// [`DeviceRow::cells`]).
    pub fn from_cells(cells: [String; 12]) -> Self {
        let [
            provider,
            device_name,
            protocol,
            public_ip,
            private_ip,
            url,
            port,
            access_type,
            account,
            password,
            pem_file_name,
            extra,
        ] = cells;
        Self {
            provider,
            device_name,
            protocol,
            public_ip,
            private_ip,
            url,
            port,
            access_type,
            account,
            password: Secret::new(password),
            pem_file_name,
            extra_credential: Secret::new(extra),
        }
    }

    /// True for the columns that hold a credential ([`COLUMNS`] index).
    pub fn is_secret_column(index: usize) -> bool {
        matches!(index, 9 | 11)
    }
}
