//! The `learnsync` CLI: every RPC of learnsync's gRPC API, human output by default and `--json`
//! for scripts. The token and every credential come from the environment or a file, never from
//! the command line.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use learnsync_client::{Client, describe, pb};

/// learnsync: keep Salesforce in step with Docebo.
#[derive(Debug, Parser)]
#[command(name = "learnsync", version, about)]
struct Cli {
    /// The server's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "LEARNSYNC_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// A file holding the bearer token, instead of the LEARNSYNC_TOKEN environment variable.
    #[arg(long, global = true, env = "LEARNSYNC_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https:// endpoint, instead of the
    /// machine's.
    #[arg(long, global = true, env = "LEARNSYNC_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A PEM client certificate to present to a server that requires one (mTLS), with
    /// --client-key.
    #[arg(
        long,
        global = true,
        env = "LEARNSYNC_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The file holding the client certificate's PEM private key.
    #[arg(
        long,
        global = true,
        env = "LEARNSYNC_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage connections (a Docebo platform paired with a Salesforce org).
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Configure an area: enabled or not, manual or realtime.
    Configure(ConfigureArgs),
    /// Launch an area's first synchronization.
    Start(RunArgs),
    /// Stop an area's active run.
    Stop(AreaArgs),
    /// Run an area again from scratch.
    Resync(ResyncArgs),
    /// Show the status of a connection's areas.
    Status(StatusArgs),
    /// List a connection's runs, newest first.
    Runs(RunsArgs),
    /// Show one run with its jobs.
    Run {
        /// The connection's id.
        connection: String,
        /// The run's id.
        run: String,
    },
    /// Read a connection's log.
    Logs(LogsArgs),
    /// Show the secret URL path to register in Docebo as the connection's webhook target.
    Webhook {
        /// The connection's id.
        connection: String,
        /// Replace the secret first (the old URL stops working).
        #[arg(long)]
        rotate: bool,
    },
    /// Read or set a connection's Salesforce mapping (a JSON or YAML file).
    #[command(subcommand)]
    Mapping(MappingCommand),
}

#[derive(Debug, Subcommand)]
enum MappingCommand {
    /// Print the connection's current mapping (the default one, version 0, until one is set).
    Get {
        /// The connection's id.
        connection: String,
        /// The form printed.
        #[arg(long, value_enum, default_value = "json")]
        output: OutputArg,
    },
    /// Check a mapping file against the connection's org and save it as the next version.
    Set {
        /// The connection's id.
        connection: String,
        /// The mapping: JSON, or YAML (by its `.yaml`/`.yml` name), as `mapping get` prints it.
        #[arg(long)]
        file: PathBuf,
        /// Check only: name every problem, save nothing.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputArg {
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum ConnectionCommand {
    /// Create a connection. Secrets come from the environment: LEARNSYNC_DOCEBO_CLIENT_SECRET,
    /// LEARNSYNC_DOCEBO_PASSWORD (password grant), LEARNSYNC_SALESFORCE_CLIENT_SECRET (client
    /// credentials), or a key file for the JWT bearer flow.
    Create(CreateArgs),
    /// Show a connection (never its credentials).
    Get {
        /// The connection's id.
        connection: String,
    },
    /// List the connections this token may see.
    List {
        /// Connections per page.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
    },
    /// Change a connection's name, budget, unenrollment policy or unenrollment guard.
    Update(UpdateArgs),
    /// Delete a connection with its runs and logs (refused while a run is active).
    Delete {
        /// The connection's id.
        connection: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// A name a person recognises.
    #[arg(long)]
    name: String,
    /// The owning tenant (operator tokens only; a tenant token uses its own).
    #[arg(long, default_value = "")]
    tenant: String,
    /// Docebo's base URL.
    #[arg(long)]
    docebo_url: String,
    /// Docebo's OAuth client id.
    #[arg(long)]
    docebo_client_id: String,
    /// Use Docebo's password grant as this user (password in LEARNSYNC_DOCEBO_PASSWORD).
    #[arg(long)]
    docebo_username: Option<String>,
    /// Salesforce's login or My Domain URL.
    #[arg(long, default_value = "https://login.salesforce.com")]
    salesforce_url: String,
    /// The connected app's consumer key.
    #[arg(long)]
    salesforce_client_id: String,
    /// Use the JWT bearer flow as this Salesforce user (key from --salesforce-key-file).
    #[arg(long, requires = "salesforce_key_file")]
    salesforce_username: Option<String>,
    /// The PEM RSA private key for the JWT bearer flow.
    #[arg(long)]
    salesforce_key_file: Option<PathBuf>,
    /// The JWT audience (empty: https://login.salesforce.com).
    #[arg(long, default_value = "")]
    salesforce_audience: String,
    /// Docebo API calls per hour for all jobs of this platform (0: 1000).
    #[arg(long, default_value_t = 0)]
    calls_per_hour: i32,
    /// Delete enrollments that disappear from Docebo instead of marking them unenrolled.
    #[arg(long)]
    delete_unenrolled: bool,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The connection's id.
    connection: String,
    /// A new name.
    #[arg(long)]
    name: Option<String>,
    /// A new Docebo call budget per hour.
    #[arg(long)]
    calls_per_hour: Option<i32>,
    /// A new unenrollment policy.
    #[arg(long, value_enum)]
    unenrolled: Option<PolicyArg>,
    /// A new unenrollment guard: the share of an object's live records one run may unenroll
    /// before it holds them for a confirmation (with --unenroll-min-records).
    #[arg(long, requires = "unenroll_min_records")]
    unenroll_max_percent: Option<i32>,
    /// The count of records a run may always unenroll, whatever the share (with
    /// --unenroll-max-percent).
    #[arg(long, requires = "unenroll_max_percent")]
    unenroll_min_records: Option<i32>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyArg {
    /// Keep the record, marked unenrolled.
    Mark,
    /// Delete the record.
    Delete,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum AreaArg {
    Users,
    Courses,
    Enrollments,
}

impl AreaArg {
    fn proto(self) -> pb::Area {
        match self {
            AreaArg::Users => pb::Area::Users,
            AreaArg::Courses => pb::Area::Courses,
            AreaArg::Enrollments => pb::Area::Enrollments,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Manual,
    Realtime,
}

#[derive(Debug, Args)]
struct ConfigureArgs {
    /// The connection's id.
    connection: String,
    /// The area.
    #[arg(value_enum)]
    area: AreaArg,
    /// Disable the area instead of enabling it.
    #[arg(long)]
    disable: bool,
    /// Manual or realtime replication.
    #[arg(long, value_enum, default_value = "manual")]
    mode: ModeArg,
    /// Realtime: the interval between incremental runs (e.g. 15m, 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Realtime: the interval between full comparisons that find unannounced deletions (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    full_every: Option<Duration>,
    /// Courses: only these Docebo category ids (comma separated).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<i64>,
}

#[derive(Debug, Args)]
struct AreaArgs {
    /// The connection's id.
    connection: String,
    /// The area.
    #[arg(value_enum)]
    area: AreaArg,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The connection's id.
    connection: String,
    /// The area.
    #[arg(value_enum)]
    area: AreaArg,
    /// Only records changed at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_time)]
    from: Option<prost_types::Timestamp>,
    /// Only records changed before this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_time)]
    to: Option<prost_types::Timestamp>,
    /// Then follow the run's progress until it ends.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct ResyncArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Write every record, even those Salesforce already holds unchanged.
    #[arg(long)]
    rewrite_unchanged: bool,
    /// Write nothing: report what a synchronization would create, update, repair and unenroll.
    #[arg(long)]
    check: bool,
    /// Unenroll even above the connection's guard (after a run held them: UNENROLLMENTS_HELD).
    #[arg(long)]
    confirm_unenrollments: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The connection's id.
    connection: String,
    /// Only these areas.
    #[arg(long, value_enum, value_delimiter = ',')]
    area: Vec<AreaArg>,
    /// Show live progress bars until no run is active.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct RunsArgs {
    /// The connection's id.
    connection: String,
    /// Only this area.
    #[arg(long, value_enum)]
    area: Option<AreaArg>,
    /// Runs to show.
    #[arg(long, default_value_t = 20)]
    limit: i32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LevelArg {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Args)]
struct LogsArgs {
    /// The connection's id.
    connection: String,
    /// Only this run's events.
    #[arg(long)]
    run: Option<String>,
    /// Only this job's events (with --run).
    #[arg(long, requires = "run")]
    job: Option<String>,
    /// Start at this sequence number.
    #[arg(long, conflicts_with = "from_first_error")]
    from: Option<i64>,
    /// Start at the run's first error (with --run).
    #[arg(long, requires = "run")]
    from_first_error: bool,
    /// Only events at or above this level.
    #[arg(long, value_enum)]
    level: Option<LevelArg>,
    /// Keep following new events (until the run ends, with --run).
    #[arg(long)]
    follow: bool,
}

fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| format!("{text:?} is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

fn secret_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("set {name} (secrets are never taken from the command line)"))
}

fn token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(path) = &cli.token_file {
        return Ok(std::fs::read_to_string(path)
            .with_context(|| format!("reading the token from {}", path.display()))?
            .trim()
            .to_string());
    }
    secret_env("LEARNSYNC_TOKEN")
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        match error.downcast_ref::<tonic::Status>() {
            Some(status) => eprintln!("error: {}{}", describe(status), causes(status)),
            None => eprintln!("error: {error:#}"),
        }
        std::process::exit(1);
    }
}

/// What a status that did not come from the server says of its cause (the transport's error,
/// e.g. a TLS alert such as `CertificateRequired` from a server that requires mTLS).
fn causes(status: &tonic::Status) -> String {
    let mut text = String::new();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn print(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// The TLS the flags ask for (files read now, so a missing one is named).
fn tls(cli: &Cli) -> anyhow::Result<learnsync_client::Tls> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut tls = learnsync_client::Tls::default();
    if let Some(path) = &cli.ca_file {
        tls.ca_pem = Some(read(path)?);
    }
    if let (Some(certificate), Some(key)) = (&cli.client_cert, &cli.client_key) {
        tls.client_identity = Some((read(certificate)?, read(key)?));
    }
    Ok(tls)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = token(&cli)?;
    let mut client = Client::connect_with(&cli.endpoint, &token, &tls(&cli)?).await?;
    let json = cli.json;
    match cli.command {
        Command::Connection(command) => connection_command(&mut client, json, command).await?,
        Command::Configure(args) => {
            let config = pb::AreaConfig {
                area: args.area.proto() as i32,
                enabled: !args.disable,
                mode: match args.mode {
                    ModeArg::Manual => pb::Mode::Manual,
                    ModeArg::Realtime => pb::Mode::Realtime,
                } as i32,
                interval: args.interval.map(|d| prost_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: 0,
                }),
                course_category_ids: args.categories,
                update_time: None,
                full_comparison_interval: args.full_every.map(|d| prost_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: 0,
                }),
            };
            let stored = client.configure(&args.connection, config).await?;
            print(json, cli::json::area_config(&stored), || {
                format!(
                    "configured: {}",
                    learnsync_client::text::area_config(&stored)
                )
            });
        }
        Command::Start(args) => {
            let timeframe = timeframe(&args);
            let run = client
                .start(&args.connection, args.area.proto(), timeframe)
                .await?;
            after_launch(&mut client, json, &args, run).await?;
        }
        Command::Resync(args) => {
            let timeframe = timeframe(&args.run);
            let run = client
                .resynchronize_with(
                    &args.run.connection,
                    args.run.area.proto(),
                    timeframe,
                    learnsync_client::Resync {
                        rewrite_unchanged: args.rewrite_unchanged,
                        check_only: args.check,
                        confirm_unenrollments: args.confirm_unenrollments,
                    },
                )
                .await?;
            after_launch(&mut client, json, &args.run, run).await?;
        }
        Command::Stop(args) => {
            let run = client.stop(&args.connection, args.area.proto()).await?;
            print(json, cli::json::run(&run), || {
                learnsync_client::text::run(&run)
            });
        }
        Command::Status(args) => {
            let areas: Vec<pb::Area> = args.area.iter().map(|a| a.proto()).collect();
            if args.watch && !json {
                learnsync_client::watch::watch(&mut client, &args.connection, &areas).await?;
            } else {
                let status = client.get_status(&args.connection, &areas).await?;
                print(json, cli::json::status(&status), || {
                    learnsync_client::text::status(&status)
                });
            }
        }
        Command::Runs(args) => {
            let response = client
                .list_runs(pb::ListRunsRequest {
                    connection_id: args.connection.clone(),
                    area: args.area.map_or(pb::Area::Unspecified, AreaArg::proto) as i32,
                    page_size: args.limit,
                    page_token: String::new(),
                })
                .await?;
            let value =
                serde_json::Value::Array(response.runs.iter().map(cli::json::run).collect());
            print(json, value, || {
                response
                    .runs
                    .iter()
                    .map(learnsync_client::text::run)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Run { connection, run } => {
            let run = client.get_run(&connection, &run).await?;
            print(json, cli::json::run(&run), || {
                learnsync_client::text::run(&run)
            });
        }
        Command::Logs(args) => logs(&mut client, json, args).await?,
        Command::Mapping(command) => mapping_command(&mut client, command).await?,
        Command::Webhook { connection, rotate } => {
            if rotate {
                client.rotate_webhook_secret(&connection).await?;
            }
            let endpoint = client.get_webhook_endpoint(&connection).await?;
            print(
                json,
                serde_json::json!({"path": endpoint.path, "generation": endpoint.generation}),
                || format!("{}  (generation {})", endpoint.path, endpoint.generation),
            );
        }
    }
    Ok(())
}

async fn mapping_command(client: &mut Client, command: MappingCommand) -> anyhow::Result<()> {
    match command {
        MappingCommand::Get { connection, output } => {
            let mapping = client.get_mapping(&connection).await?;
            print_mapping(&mapping, output)?;
        }
        MappingCommand::Set {
            connection,
            file,
            check,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let yaml = file.extension().is_some_and(|ext| {
                ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml")
            });
            let document: serde_json::Value = if yaml {
                serde_norway::from_str(&text)
                    .with_context(|| format!("{} is not YAML", file.display()))?
            } else {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?
            };
            let mapping = learnsync_client::pb_mapping::from_document(&document)
                .map_err(|reason| anyhow::anyhow!("{}: {reason}", file.display()))?;
            let answer = client.set_mapping(&connection, mapping, check).await?;
            if check {
                println!("the mapping fits the org (nothing saved)");
            } else {
                println!("mapping saved as version {}", answer.version);
            }
        }
    }
    Ok(())
}

/// Prints a mapping as a document (the form `mapping set` reads), with its version.
fn print_mapping(mapping: &pb::Mapping, output: OutputArg) -> anyhow::Result<()> {
    let mut document = learnsync_client::pb_mapping::to_document(mapping);
    if let serde_json::Value::Object(fields) = &mut document {
        fields.insert("version".into(), mapping.version.into());
    }
    match output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(&document)?),
        OutputArg::Yaml => print!("{}", serde_norway::to_string(&document)?),
    }
    Ok(())
}

fn timeframe(args: &RunArgs) -> Option<pb::Timeframe> {
    (args.from.is_some() || args.to.is_some()).then_some(pb::Timeframe {
        start_time: args.from,
        end_time: args.to,
    })
}

async fn after_launch(
    client: &mut Client,
    json: bool,
    args: &RunArgs,
    run: pb::Run,
) -> anyhow::Result<()> {
    print(json, cli::json::run(&run), || {
        learnsync_client::text::run(&run)
    });
    if args.watch && !json {
        learnsync_client::watch::watch(client, &args.connection, &[args.area.proto()]).await?;
    }
    Ok(())
}

async fn connection_command(
    client: &mut Client,
    json: bool,
    command: ConnectionCommand,
) -> anyhow::Result<()> {
    match command {
        ConnectionCommand::Create(args) => {
            let docebo_grant = match &args.docebo_username {
                Some(username) => {
                    pb::docebo_credentials::Grant::Password(pb::DoceboPasswordGrant {
                        username: username.clone(),
                        password: secret_env("LEARNSYNC_DOCEBO_PASSWORD")?,
                    })
                }
                None => pb::docebo_credentials::Grant::ClientCredentials(
                    pb::DoceboClientCredentialsGrant {},
                ),
            };
            let salesforce_grant = match (&args.salesforce_username, &args.salesforce_key_file) {
                (Some(username), Some(path)) => {
                    pb::salesforce_credentials::Grant::JwtBearer(pb::SalesforceJwtBearerGrant {
                        username: username.clone(),
                        private_key_pem: std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                        audience: args.salesforce_audience.clone(),
                    })
                }
                (None, None) => pb::salesforce_credentials::Grant::ClientCredentials(
                    pb::SalesforceClientCredentialsGrant {
                        client_secret: secret_env("LEARNSYNC_SALESFORCE_CLIENT_SECRET")?,
                    },
                ),
                _ => bail!("--salesforce-username and --salesforce-key-file go together"),
            };
            let connection = client
                .create_connection(pb::CreateConnectionRequest {
                    connection: Some(pb::Connection {
                        display_name: args.name,
                        tenant: args.tenant,
                        docebo: Some(pb::DoceboCredentials {
                            base_url: args.docebo_url,
                            client_id: args.docebo_client_id,
                            client_secret: secret_env("LEARNSYNC_DOCEBO_CLIENT_SECRET")?,
                            grant: Some(docebo_grant),
                        }),
                        salesforce: Some(pb::SalesforceCredentials {
                            login_url: args.salesforce_url,
                            client_id: args.salesforce_client_id,
                            grant: Some(salesforce_grant),
                        }),
                        docebo_calls_per_hour: args.calls_per_hour,
                        unenrollment_policy: if args.delete_unenrolled {
                            pb::UnenrollmentPolicy::Delete
                        } else {
                            pb::UnenrollmentPolicy::MarkUnenrolled
                        } as i32,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await?;
            print(json, cli::json::connection(&connection), || {
                learnsync_client::text::connection(&connection)
            });
        }
        ConnectionCommand::Get { connection } => {
            let connection = client.get_connection(&connection).await?;
            print(json, cli::json::connection(&connection), || {
                learnsync_client::text::connection(&connection)
            });
        }
        ConnectionCommand::List { page_size } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = client.list_connections(page_size, &token).await?;
                all.extend(page.connections);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            let value = serde_json::Value::Array(all.iter().map(cli::json::connection).collect());
            print(json, value, || {
                if all.is_empty() {
                    "no connections".to_string()
                } else {
                    all.iter()
                        .map(learnsync_client::text::connection)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            });
        }
        ConnectionCommand::Update(args) => {
            let updated = client.update_connection(update_request(args)?).await?;
            print(json, cli::json::connection(&updated), || {
                learnsync_client::text::connection(&updated)
            });
        }
        ConnectionCommand::Delete { connection } => {
            let deleted = client.delete_connection(&connection).await?;
            print(
                json,
                serde_json::json!({"connection_id": deleted.connection_id}),
                || format!("deleted connection {}", deleted.connection_id),
            );
        }
    }
    Ok(())
}

/// The UpdateConnection request for `connection update`: the fields given, and the mask naming
/// them.
fn update_request(args: UpdateArgs) -> anyhow::Result<pb::UpdateConnectionRequest> {
    let mut paths = Vec::new();
    let mut connection = pb::Connection {
        id: args.connection,
        ..Default::default()
    };
    if let Some(name) = args.name {
        connection.display_name = name;
        paths.push("display_name".to_string());
    }
    if let Some(calls) = args.calls_per_hour {
        connection.docebo_calls_per_hour = calls;
        paths.push("docebo_calls_per_hour".to_string());
    }
    if let Some(policy) = args.unenrolled {
        connection.unenrollment_policy = match policy {
            PolicyArg::Mark => pb::UnenrollmentPolicy::MarkUnenrolled,
            PolicyArg::Delete => pb::UnenrollmentPolicy::Delete,
        } as i32;
        paths.push("unenrollment_policy".to_string());
    }
    if let (Some(max_percent), Some(min_records)) =
        (args.unenroll_max_percent, args.unenroll_min_records)
    {
        connection.unenrollment_guard = Some(pb::UnenrollmentGuard {
            max_percent,
            min_records,
        });
        paths.push("unenrollment_guard".to_string());
    }
    if paths.is_empty() {
        bail!(
            "nothing to change: give --name, --calls-per-hour, --unenrolled or \
             --unenroll-max-percent with --unenroll-min-records"
        );
    }
    Ok(pb::UpdateConnectionRequest {
        connection: Some(connection),
        update_mask: Some(prost_types::FieldMask { paths }),
        request_id: String::new(),
    })
}

async fn logs(client: &mut Client, json: bool, args: LogsArgs) -> anyhow::Result<()> {
    let position = if args.from_first_error {
        Some(pb::stream_logs_request::Position::FromFirstError(true))
    } else {
        args.from
            .map(pb::stream_logs_request::Position::FromSequence)
    };
    let mut stream = client
        .stream_logs(pb::StreamLogsRequest {
            connection_id: args.connection,
            run_id: args.run.unwrap_or_default(),
            job_id: args.job.unwrap_or_default(),
            position,
            min_level: args
                .level
                .map_or(pb::LogLevel::Unspecified, |level| match level {
                    LevelArg::Debug => pb::LogLevel::Debug,
                    LevelArg::Info => pb::LogLevel::Info,
                    LevelArg::Warn => pb::LogLevel::Warn,
                    LevelArg::Error => pb::LogLevel::Error,
                }) as i32,
            follow: args.follow,
        })
        .await?;
    while let Some(event) = stream.next().await {
        let event = event?;
        print(json, cli::json::log_event(&event), || {
            learnsync_client::text::log_event(&event)
        });
    }
    Ok(())
}
