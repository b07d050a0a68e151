//! Packets captured from a real MariaDB client and server, as hex, header
//! included.
//!
//! Server: MariaDB 10.11.14 (Debian 12 package `10.11.14-MariaDB-0+deb12u2`)
//! on 127.0.0.1, with `--ssl-cert/--ssl-key` set. Client: `mariadb` 15.1
//! from the same release (libmariadb 3.3.17). A Python relay on 127.0.0.1
//! between them logged each direction. Users: `nat` (mysql_native_password,
//! password `natpw`) and `ed` (ed25519, password `edpw`); database `shop`.
//! Scrambles and signatures are from throwaway runs.

/// The server's greeting: protocol 10, version `5.5.5-10.11.14-MariaDB-0+
/// deb12u2` (MariaDB's prefix for old clients), connection id 4,
/// capabilities 0x81ff_fffe (CLIENT_LONG_PASSWORD clear: MariaDB extended
/// capabilities 0x1d in the reserved bytes), CLIENT_SSL set, collation 8,
/// auth plugin mysql_native_password.
pub const MARIADB_GREETING: &str = "640000000a352e352e352d31302e31312e31342d4d6172696144422d302b6465623132753200040000003f70396a2d3c295700feff080200ff81150000000000001d0000005b437d6e2d366475407c7248006d7973716c5f6e61746976655f70617373776f726400";

/// HandshakeResponse41 from `mariadb --skip-ssl -h127.0.0.1 -unat -pnatpw
/// shop`: mysql_native_password, database `shop`, connection attributes.
pub const MARIADB_RESPONSE_NATIVE_DB: &str = "d30000018ca2bf000000000121000000000000000000000000000000000000001d0000006e6174001417bf59d33f1acf55fb55b164f6353687d2c5cc8a73686f70006d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404323830340f5f636c69656e745f76657273696f6e06332e332e3137095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31";

/// HandshakeResponse41 from the same command without a database: no
/// CLIENT_CONNECT_WITH_DB.
pub const MARIADB_RESPONSE_NATIVE_NO_DB: &str = "ce00000184a2bf000000000121000000000000000000000000000000000000001d0000006e6174001408046bf5af9663e1fb8ab0bf6e4f438fe3c372816d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404323831360f5f636c69656e745f76657273696f6e06332e332e3137095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31";

/// HandshakeResponse41 from `mariadb --skip-ssl -ued -pedpw shop`: the
/// client answers the greeting's mysql_native_password first, and the
/// server then switches it to client_ed25519.
pub const MARIADB_RESPONSE_ED25519_USER: &str = "d20000018ca2bf000000000121000000000000000000000000000000000000001d00000065640014f95a9115507803e8d27f764fb7ed349ce778572973686f70006d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404323831330f5f636c69656e745f76657273696f6e06332e332e3137095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31";

/// The server's AuthSwitchRequest to client_ed25519 (sequence id 2) with a
/// 32-byte nonce.
pub const MARIADB_AUTH_SWITCH_ED25519: &str = "30000002fe636c69656e745f65643235353139009828110ebc7042e099c629828b6da985fda97c6a0091be588c45bc29eb7a25d7";

/// The client's answer to it (sequence id 3): a 64-byte ed25519 signature,
/// raw auth data with no marker byte.
pub const MARIADB_ED25519_SIGNATURE: &str = "40000003d0bf253146d07f57a885127dc1a7e6ddd0aa713b20f93b2caaba2c739a9741d495d5f283e76b150b8ca25dd55bae7c2d9176f984bfef33c0ecbdcc6827412d03";

/// The OK packet after the ed25519 login (sequence id 4), with a session
/// state change for the schema `shop`.
pub const MARIADB_OK_ED25519: &str = "1000000400000002400000000701050473686f70";

/// The OK packet after the native-password login with database `shop`.
pub const MARIADB_OK_DB: &str = "1000000200000002400000000701050473686f70";

/// The OK packet after the native-password login without a database.
pub const MARIADB_OK_NO_DB: &str = "0700000200000002000000";

/// SSLRequest from `mariadb --ssl --ssl-ca=... -unat -pnatpw shop`.
pub const MARIADB_SSL_REQUEST: &str =
    "200000018caabf000000000121000000000000000000000000000000000000001d000000";

/// ERR after a wrong password: 1045, SQLSTATE 28000, "Access denied for
/// user 'nat'@'127.0.0.1' (using password: YES)".
pub const MARIADB_ERR_ACCESS_DENIED: &str = "47000002ff15042332383030304163636573732064656e69656420666f72207573657220276e61742740273132372e302e302e312720287573696e672070617373776f72643a2059455329";

/// COM_QUIT sent by the client on exit.
pub const MARIADB_CLIENT_QUIT: &str = "0100000001";

/// Every capture above, for tests that mutate them.
pub const ALL: &[&str] = &[
    MARIADB_GREETING,
    MARIADB_RESPONSE_NATIVE_DB,
    MARIADB_RESPONSE_NATIVE_NO_DB,
    MARIADB_RESPONSE_ED25519_USER,
    MARIADB_AUTH_SWITCH_ED25519,
    MARIADB_ED25519_SIGNATURE,
    MARIADB_OK_ED25519,
    MARIADB_OK_DB,
    MARIADB_OK_NO_DB,
    MARIADB_SSL_REQUEST,
    MARIADB_ERR_ACCESS_DENIED,
    MARIADB_CLIENT_QUIT,
];

/// The bytes of a capture above.
pub use crate::pg::captured::bytes;
