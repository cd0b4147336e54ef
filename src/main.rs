use clap::Parser;
use ferry::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ferry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ferry::error::ExitCode::Io.code());
        }
    };
    match runtime.block_on(ferry::run(cli)) {
        Ok(out) => {
            if let Some(line) = out.stdout {
                println!("{line}");
            }
            std::process::ExitCode::from(out.code)
        }
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::from(e.exit_code().code())
        }
    }
}
