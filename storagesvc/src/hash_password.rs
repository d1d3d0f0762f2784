//! `storagesvc hash-password`: turns a password read from standard input into the Argon2
//! PHC string that `AUTH_BASIC_USERS` takes, so no password ever has to be stored in clear
//! or passed on a command line (where `ps` and shell history would show it).

use std::io::{BufRead, Write};
use std::process::ExitCode;

/// The word that selects this command: `storagesvc hash-password`.
pub const SUBCOMMAND: &str = "hash-password";

/// Whether the process was started as `storagesvc hash-password`.
pub fn requested() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == SUBCOMMAND)
}

/// Reads one line from standard input and prints its hash.
pub fn run() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("cannot read the password from standard input: {err}");
        return ExitCode::FAILURE;
    }
    match hash_line(&line) {
        Ok(hash) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{hash}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(reason) => {
            eprintln!("{reason}");
            ExitCode::FAILURE
        }
    }
}

/// The hash of `line` without its line ending; an empty password is refused.
fn hash_line(line: &str) -> Result<String, String> {
    let password = line.strip_suffix('\n').unwrap_or(line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("no password: write it on standard input, e.g. \
             `printf '%s' \"$PASSWORD\" | storagesvc hash-password`"
            .to_owned());
    }
    shared::auth::hash_password(password).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::auth::BasicUsers;

    #[tokio::test]
    async fn the_printed_hash_verifies_the_password_without_its_line_ending() {
        let hash = hash_line("s3cret:with colon\r\n").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let users = BasicUsers::parse(&format!("svc:{hash}")).unwrap();
        use base64::Engine;
        let header = base64::engine::general_purpose::STANDARD.encode("svc:s3cret:with colon");
        assert!(users.verify(&header).await);
    }

    #[test]
    fn an_empty_password_is_refused() {
        assert!(hash_line("\n").is_err());
        assert!(hash_line("").is_err());
    }
}
