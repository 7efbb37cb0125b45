//! `quicbus token`: mints an HS256 token for development and tests, signed
//! with the secret a server is started with.

use std::path::{Path, PathBuf};

use quicbus::auth::token::{mint_hs256, unix_now, TokenRequest};
use quicbus::auth::{Pattern, PermissionLists};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// File holding the shared secret (its bytes, less one trailing newline).
    #[arg(long)]
    secret_file: PathBuf,
    /// The user the token names (its `sub`).
    #[arg(long, value_parser = non_empty)]
    user: String,
    /// Rooms the user may publish to (a pattern: `*` one token, `>` the
    /// rest); repeatable.
    #[arg(long = "publish", value_name = "PATTERN", value_parser = pattern)]
    publish: Vec<String>,
    /// Rooms the user may subscribe to (a pattern); repeatable.
    #[arg(long = "subscribe", value_name = "PATTERN", value_parser = pattern)]
    subscribe: Vec<String>,
    /// Rooms whose history the user may replay (a pattern); repeatable.
    #[arg(long = "history", value_name = "PATTERN", value_parser = pattern)]
    history: Vec<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
}

/// Prints the token, and only the token, on stdout.
pub fn token(args: TokenArgs) -> CliResult {
    let secret = read_secret(&args.secret_file)?;
    let request = TokenRequest {
        user: args.user,
        permissions: PermissionLists {
            publish: args.publish,
            subscribe: args.subscribe,
            history: args.history,
        },
        ttl: args.ttl,
    };
    let token = mint_hs256(&secret, &request, unix_now())?;
    println!("{token}");
    Ok(())
}

/// The file's bytes less one trailing newline (`\n` or `\r\n`), which
/// editors and `echo` add; anything else is part of the secret.
pub(super) fn read_secret(path: &Path) -> CliResult<Vec<u8>> {
    let mut secret = std::fs::read(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()).into());
    }
    Ok(secret)
}

fn pattern(s: &str) -> Result<String, String> {
    Pattern::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_not_part_of_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&[u8], &[u8]); 4] = [
            (b"s3cret", b"s3cret"),
            (b"s3cret\n", b"s3cret"),
            (b"s3cret\r\n", b"s3cret"),
            (b"s3cret\n\n", b"s3cret\n"),
        ];
        for (contents, secret) in cases {
            let path = dir.path().join("secret");
            std::fs::write(&path, contents).expect("write");
            assert_eq!(read_secret(&path).expect("read"), secret);
        }
        for empty in [&b""[..], b"\n", b"\r\n"] {
            let path = dir.path().join("empty");
            std::fs::write(&path, empty).expect("write");
            let message = read_secret(&path).unwrap_err().to_string();
            assert!(message.contains("is empty"), "{message}");
        }
    }
}
