//! A throwaway PostgreSQL server for tests of the PostgreSQL store.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temporary directory and
//! starts the server there with `pg_ctl`, listening on a free port of
//! `127.0.0.1` only (no Unix-domain socket). The superuser `postgres` signs
//! in without a password (`trust` authentication, which is fine on
//! loopback), and durability is traded for speed: `fsync`,
//! `synchronous_commit` and `full_page_writes` are off. `max_connections` is
//! 200, so that many pools may share one server. The server logs to
//! `server.log` in the temporary directory; when it does not start, the error
//! holds the end of that log.
//!
//! [`PgServer::create_database`] gives each test a fresh database of its own
//! on a shared server, through `psql`; the crate has no PostgreSQL client of
//! its own.
//!
//! Dropping a [`PgServer`] (also while a test panics) stops the server with
//! an immediate shutdown and removes the directory, so no server outlives its
//! test. [`PgServer::stop`] does the same and reports what failed.
//!
//! # Finding PostgreSQL
//!
//! The server programs (`initdb`, `pg_ctl`, `postgres`) are taken from the
//! directory `PG_BIN` names, if it is set; else from the newest
//! `/usr/lib/postgresql/<version>/bin` that holds them (Debian's package
//! `postgresql` puts them there, not on `PATH`); else from the first
//! directory on `PATH` that holds them. `psql` is taken from the same
//! directory, else from `PATH`.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root. Then
//! the directory is made under `/tmp` and handed to the system user
//! `postgres` (`chown -R`), and `initdb` and `pg_ctl` run as that user
//! through `runuser -u postgres --` (or `su postgres -s /bin/sh -c` where
//! there is no `runuser`). Debian's package creates the user.
//!
//! ```no_run
//! # fn example() -> anyhow::Result<()> {
//! use wrun_tests::PgServer;
//!
//! let server = PgServer::start()?;
//! let url = server.create_database("store_migrations")?;
//! assert_eq!(url, server.database_url("store_migrations"));
//! // Connect to `url` with the store under test.
//! server.stop()?;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// The superuser `initdb` creates, and the system user the server runs as
/// when the tests run as root.
const SUPERUSER: &str = "postgres";

/// How many free ports [`PgServer::start`] tries: another process may take
/// the port between choosing it and the server binding it.
const START_ATTEMPTS: usize = 5;

/// How many seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// How many seconds `psql` waits for a connection.
const PSQL_CONNECT_TIMEOUT_SECS: &str = "10";

/// How many lines of the server log an error message holds.
const LOG_TAIL_LINES: usize = 30;

/// The settings appended to `postgresql.conf`; the port is given to
/// `pg_ctl` on each attempt.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    // TCP only: no socket file whose path could grow too long.
    ("unix_socket_directories", "''"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
];

/// A running PostgreSQL server in a temporary directory; see the
/// [module docs](self).
#[derive(Debug)]
pub struct PgServer {
    /// The port on `127.0.0.1`; 0 until the server has started.
    port: u16,
    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    /// How `initdb` and `pg_ctl` are run.
    runner: Runner,
    /// The temporary directory's path: `data/` and `server.log` are in it.
    root: PathBuf,
    /// The temporary directory; `None` once the server is stopped and the
    /// directory removed.
    dir: Option<TempDir>,
}

impl PgServer {
    /// Creates a database cluster in a new temporary directory and starts a
    /// server on it, listening on a free port of `127.0.0.1`.
    ///
    /// `initdb` runs with `--auth=trust -U postgres --no-sync
    /// --encoding=UTF8 --locale=C`; the server with the settings the
    /// [module docs](self) list, logging to `server.log` in the directory.
    /// Should the port be taken before the server binds it, another is tried
    /// (five in all).
    ///
    /// # Errors
    ///
    /// Fails if the server programs cannot be found (the message names the
    /// Debian package and `PG_BIN`), if the directory cannot be made or
    /// handed to the `postgres` user, if `initdb` fails (the message holds
    /// its output), or if the server does not start within 60 s (the message
    /// holds the end of the server log). The directory is removed then.
    pub fn start() -> anyhow::Result<PgServer> {
        PgServer::start_with(SETTINGS)
    }

    /// [`start`](Self::start) with `settings` in `postgresql.conf`.
    fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<PgServer> {
        let bin = find_server_bin()?;
        let root_user = running_as_root()?;
        let runner = if root_user {
            Runner::for_root()?
        } else {
            Runner::Direct
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix("wrun-pg-");
        // The postgres user must reach the directory: /tmp is open to all,
        // where `TMPDIR` may not be.
        let dir = if root_user {
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .context("create PostgreSQL's temporary directory")?;
        let mut server = PgServer {
            port: 0,
            bin,
            runner,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
        };
        // From here on, dropping `server` stops whatever started and
        // removes the directory.
        if root_user {
            server.hand_to_postgres()?;
        }
        server.init(settings)?;
        server.launch()?;
        Ok(server)
    }

    /// The URL of the `postgres` database, as the superuser:
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The port the server listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the database `name`, as the superuser:
    /// `postgres://postgres@127.0.0.1:PORT/NAME`. The database need not
    /// exist; [`create_database`](Self::create_database) creates one.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates the empty database `name` with `psql` and returns its URL,
    /// as [`database_url`](Self::database_url) gives it.
    ///
    /// # Errors
    ///
    /// Fails if `name` is not 1 to 63 characters of `a-z`, `0-9` and `_`,
    /// if `psql` cannot be found, or if it fails, as it does when the
    /// database exists (the message holds its output).
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        check_database_name(name)?;
        self.psql(&format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("create the database {name}"))?;
        Ok(self.database_url(name))
    }

    /// Runs `sql` in the `postgres` database with `psql` (unaligned, tuples
    /// only, stopping at the first error) and returns what it printed.
    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let psql = self.find_psql()?;
        let port = self.port.to_string();
        let output = Command::new(&psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT_SECS)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", psql.display()))?;
        if !output.status.success() {
            bail!("psql failed ({}): {}", output.status, printed(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `psql` next to the server programs, else on `PATH`.
    fn find_psql(&self) -> anyhow::Result<PathBuf> {
        let beside = self.bin.join("psql");
        if is_executable(&beside) {
            return Ok(beside);
        }
        path_dirs()
            .into_iter()
            .map(|dir| dir.join("psql"))
            .find(|candidate| is_executable(candidate))
            .with_context(|| {
                format!(
                    "psql not found in {} nor on PATH: it is in Debian's package \
                     `postgresql-client`",
                    self.bin.display()
                )
            })
    }

    /// Stops the server (immediate shutdown: it does not wait for clients
    /// or write a checkpoint) and removes its directory, as dropping does.
    ///
    /// # Errors
    ///
    /// Fails if `pg_ctl` could not stop the server (it is then killed by
    /// its process id) or the directory could not be removed.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    /// Stops the server if it runs, then removes the directory; does
    /// nothing the second time.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let stopped = self.stop_server();
        let removed = dir
            .close()
            .with_context(|| format!("remove {}", self.root.display()));
        stopped.and(removed)
    }

    /// `pg_ctl stop -m immediate`, when the server left its pid file; a
    /// SIGKILL to the process id in that file should `pg_ctl` fail.
    fn stop_server(&self) -> anyhow::Result<()> {
        let pid_file = self.data().join("postmaster.pid");
        let Ok(pid_text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let data = self.data();
        let stopped = self.run(
            &self.bin.join("pg_ctl"),
            &[
                OsStr::new("stop"),
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-m"),
                OsStr::new("immediate"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(PG_CTL_TIMEOUT_SECS),
            ],
        );
        match stopped {
            Ok(output) if output.status.success() => Ok(()),
            failed => {
                let why = match failed {
                    Ok(output) => format!("({}): {}", output.status, printed(&output)),
                    Err(error) => format!("{error:#}"),
                };
                // The postmaster's process id is the pid file's first line.
                if let Some(pid) = pid_text.lines().next().map(str::trim)
                    && !pid.is_empty()
                    && pid.bytes().all(|b| b.is_ascii_digit())
                {
                    let _ = Command::new("kill")
                        .args(["-KILL", pid])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                bail!("pg_ctl could not stop PostgreSQL {why}")
            }
        }
    }

    /// The database cluster's directory.
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server's log file.
    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// Gives the directory to the `postgres` user, for a root process.
    fn hand_to_postgres(&self) -> anyhow::Result<()> {
        let output = Command::new("chown")
            .arg("-R")
            .arg(format!("{SUPERUSER}:"))
            .arg(&self.root)
            .stdin(Stdio::null())
            .output()
            .context("run chown")?;
        if !output.status.success() {
            bail!(
                "could not give {} to the user {SUPERUSER} ({}), who runs PostgreSQL when the \
                 tests run as root: {}",
                self.root.display(),
                output.status,
                printed(&output)
            );
        }
        Ok(())
    }

    /// Runs `initdb` and appends `settings` to `postgresql.conf`.
    fn init(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let initdb = self.bin.join("initdb");
        let data = self.data();
        let output = self.run(
            &initdb,
            &[
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("--auth=trust"),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--no-sync"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--locale=C"),
            ],
        )?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                initdb.display(),
                output.status,
                printed(&output)
            );
        }
        let conf = data.join("postgresql.conf");
        let mut lines = String::from("\n# wrun-tests: a throwaway server.\n");
        for (name, value) in settings {
            let _ = writeln!(lines, "{name} = {value}");
        }
        // Appending keeps the file's owner (postgres, when running as root).
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .with_context(|| format!("append the test settings to {}", conf.display()))
    }

    /// Starts the server with `pg_ctl start -w` on a free port, trying
    /// another port when the chosen one was taken meanwhile.
    fn launch(&mut self) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let log = self.log_path();
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let log_before = std::fs::metadata(&log).map_or(0, |meta| meta.len());
            let options = format!("-p {port}");
            let output = self.run(
                &pg_ctl,
                &[
                    OsStr::new("start"),
                    OsStr::new("-D"),
                    data.as_os_str(),
                    OsStr::new("-l"),
                    log.as_os_str(),
                    OsStr::new("-o"),
                    OsStr::new(&options),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new(PG_CTL_TIMEOUT_SECS),
                ],
            )?;
            if output.status.success() {
                self.port = port;
                return Ok(());
            }
            let this_attempt = std::fs::read(&log)
                .ok()
                .and_then(|bytes| {
                    let from = usize::try_from(log_before).ok()?;
                    bytes.get(from..).map(<[u8]>::to_vec)
                })
                .unwrap_or_default();
            let port_taken =
                String::from_utf8_lossy(&this_attempt).contains("Address already in use");
            if port_taken && attempt < START_ATTEMPTS {
                attempt += 1;
                continue;
            }
            bail!(
                "PostgreSQL did not start on 127.0.0.1:{port} (attempt {attempt} of \
                 {START_ATTEMPTS}); pg_ctl ({}): {}\n{}",
                output.status,
                printed(&output),
                self.log_tail()
            );
        }
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        let log = self.log_path();
        let text = match std::fs::read(&log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => return format!("no server log at {}: {error}", log.display()),
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(LOG_TAIL_LINES)..)
            .unwrap_or(&[]);
        format!(
            "the server log {} ends:\n{}",
            log.display(),
            tail.join("\n")
        )
    }

    /// Runs `program` with `args` as the user who runs the server, in the
    /// temporary directory, and collects its output.
    fn run(&self, program: &Path, args: &[&OsStr]) -> anyhow::Result<Output> {
        self.runner
            .command(program, args)?
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", program.display()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// How `initdb` and `pg_ctl` are run.
#[derive(Debug)]
enum Runner {
    /// Directly: the tests do not run as root.
    Direct,
    /// As root, through `runuser -u postgres --`.
    Runuser(PathBuf),
    /// As root, through `su postgres -s /bin/sh -c`.
    Su(PathBuf),
}

impl Runner {
    /// `runuser`, else `su`, to run programs as the `postgres` user.
    fn for_root() -> anyhow::Result<Runner> {
        let user = Command::new("id")
            .args(["-u", SUPERUSER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run `id` to look for the postgres user")?;
        if !user.success() {
            bail!(
                "the tests run as root, which PostgreSQL refuses, and there is no `{SUPERUSER}` \
                 user to run it as (Debian's package `postgresql` creates one)"
            );
        }
        if let Some(runuser) = find_on_path("runuser", &["/usr/sbin", "/sbin"]) {
            return Ok(Runner::Runuser(runuser));
        }
        find_on_path("su", &["/usr/bin", "/bin"])
            .map(Runner::Su)
            .context(
                "the tests run as root, which PostgreSQL refuses, and neither runuser nor su \
                 was found to run it as the postgres user",
            )
    }

    /// The command that runs `program` with `args`.
    fn command(&self, program: &Path, args: &[&OsStr]) -> anyhow::Result<Command> {
        Ok(match self {
            Runner::Direct => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            Runner::Runuser(runuser) => {
                let mut command = Command::new(runuser);
                command
                    .args(["-u", SUPERUSER, "--"])
                    .arg(program)
                    .args(args);
                command
            }
            Runner::Su(su) => {
                let mut line = String::from("exec");
                for word in std::iter::once(program.as_os_str()).chain(args.iter().copied()) {
                    let word = word
                        .to_str()
                        .with_context(|| format!("{word:?} is not UTF-8, so su cannot run it"))?;
                    line.push(' ');
                    line.push_str(&shell_quote(word));
                }
                let mut command = Command::new(su);
                command.args([SUPERUSER, "-s", "/bin/sh", "-c", &line]);
                command
            }
        })
    }
}

/// `word` in single quotes for `/bin/sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Whether this process runs as root (effective user id 0): from
/// `/proc/self/status`, else from `id -u`.
fn running_as_root() -> anyhow::Result<bool> {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                // Real, effective, saved and file system user ids.
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    let euid = match from_proc {
        Some(euid) => euid,
        None => {
            let output = Command::new("id")
                .arg("-u")
                .stdin(Stdio::null())
                .output()
                .context("run `id -u` to learn whether the tests run as root")?;
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
    };
    Ok(euid == "0")
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: the one `PG_BIN`
/// names, else the newest under `/usr/lib/postgresql`, else one on `PATH`.
fn find_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_server_programs(&dir) {
            return Ok(dir);
        }
        bail!(
            "PG_BIN names {}, which lacks one of initdb, pg_ctl and postgres",
            dir.display()
        );
    }
    newest_versioned_bin(Path::new("/usr/lib/postgresql"))
        .or_else(|| path_dirs().into_iter().find(|dir| has_server_programs(dir)))
        .context(
            "PostgreSQL's server programs (initdb, pg_ctl, postgres) not found: the PostgreSQL \
             store's tests need Debian's package `postgresql` (apt-get install postgresql), or \
             PG_BIN naming the directory that holds them",
        )
}

/// The `<version>/bin` directory under `root` with the highest version
/// (`15` over `9.6`) that holds the server programs.
fn newest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_server_programs(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Whether `dir` holds `initdb`, `pg_ctl` and `postgres`.
fn has_server_programs(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|name| is_executable(&dir.join(name)))
}

/// The directories on `PATH`.
fn path_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).collect()
}

/// `name` on `PATH`, else in one of `fallbacks`.
fn find_on_path(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A free port on `127.0.0.1`, released for the server to bind.
fn free_port() -> anyhow::Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .context("find a free loopback port")
}

/// Refuses database names that would need quoting beyond double quotes, or
/// that PostgreSQL would truncate.
fn check_database_name(name: &str) -> anyhow::Result<()> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if name.is_empty() || name.len() > 63 || !name.bytes().all(allowed) {
        bail!("database name {name:?} is not 1 to 63 characters of a-z, 0-9 and _");
    }
    Ok(())
}

/// What a program printed, stdout then stderr, trimmed.
fn printed(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    /// `psql -c sql` in `database`, connecting by its URL as a store would.
    fn psql_at(server: &PgServer, database: &str, sql: &str) -> Output {
        Command::new(server.find_psql().unwrap())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(server.database_url(database))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    #[test]
    fn postgres_server_creates_databases_and_stops() {
        let started = Instant::now();
        let server = PgServer::start().unwrap();
        let root = server.root.clone();
        let port = server.port();
        assert!(root.join("data").join("PG_VERSION").is_file());
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );

        let first = server.create_database("wrun_first").unwrap();
        let second = server.create_database("wrun_second").unwrap();
        assert_eq!(
            first,
            format!("postgres://postgres@127.0.0.1:{port}/wrun_first")
        );
        assert_eq!(second, server.database_url("wrun_second"));

        let output = psql_at(&server, "wrun_second", "select 1");
        assert!(output.status.success(), "{}", printed(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
        let output = psql_at(
            &server,
            "wrun_first",
            "select current_database() || ' ' || current_setting('fsync') || ' ' || \
             current_setting('max_connections') || ' ' || pg_encoding_to_char(encoding) \
             from pg_database where datname = current_database()",
        );
        assert!(output.status.success(), "{}", printed(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "wrun_first off 200 UTF8"
        );

        // An existing database and a name that needs quoting are refused.
        let error = server.create_database("wrun_first").unwrap_err();
        assert!(format!("{error:#}").contains("already exists"), "{error:#}");
        for bad in ["", "Upper", "semi;colon", "quo\"te", &"x".repeat(64)] {
            assert!(server.create_database(bad).is_err(), "{bad:?}");
        }

        server.stop().unwrap();
        assert!(!root.exists(), "the directory is removed");
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens on {port} any more"
        );
        eprintln!("postgres test took {:?}", started.elapsed());
    }

    #[test]
    fn dropping_stops_the_postgres_server() {
        let server = PgServer::start().unwrap();
        let root = server.root.clone();
        let port = server.port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(server);
        assert!(!root.exists());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_postgres_server_that_cannot_start_shows_its_log() {
        let error = PgServer::start_with(&[("shared_buffers", "'plenty'")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("PostgreSQL did not start"), "{error}");
        assert!(error.contains("server.log ends:"), "{error}");
        assert!(error.contains("shared_buffers"), "{error}");
        let root = error
            .split_whitespace()
            .find(|word| word.ends_with("/server.log"))
            .map(|log| PathBuf::from(log.trim_end_matches("/server.log")))
            .unwrap();
        assert!(!root.exists(), "the directory is removed");
    }

    #[test]
    fn the_newest_postgres_version_is_chosen() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13", "17"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let programs: &[&str] = if version == "17" {
                // Only the client: not a server installation.
                &["psql"]
            } else {
                &["initdb", "pg_ctl", "postgres"]
            };
            for program in programs {
                let path = bin.join(program);
                std::fs::write(&path, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::create_dir_all(root.path().join("common").join("bin")).unwrap();
        assert_eq!(
            newest_versioned_bin(root.path()),
            Some(root.path().join("15").join("bin"))
        );
        assert_eq!(newest_versioned_bin(&root.path().join("missing")), None);
    }

    #[test]
    fn programs_run_as_the_postgres_user_when_root() {
        if !running_as_root().unwrap() {
            return;
        }
        let mut runners = vec![Runner::for_root().unwrap()];
        runners.extend(find_on_path("su", &["/usr/bin", "/bin"]).map(Runner::Su));
        let id = find_on_path("id", &["/usr/bin", "/bin"]).unwrap();
        for runner in runners {
            let output = runner
                .command(&id, &[OsStr::new("-un"), OsStr::new("it's")])
                .unwrap()
                .output()
                .unwrap();
            // `id -un "it's"` names the user it's, who does not exist: the
            // quote reached `id` whole.
            assert!(
                printed(&output).contains("it's"),
                "{runner:?}: {}",
                printed(&output)
            );
            let output = runner
                .command(&id, &[OsStr::new("-un")])
                .unwrap()
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).trim(),
                SUPERUSER,
                "{runner:?}"
            );
        }
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
