use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors, matching the documented exit codes.
    let cli = auditctl::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("auditctl: cannot start the async runtime: {e}");
            return ExitCode::from(auditctl::EXIT_IO);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let res = rt.block_on(auditctl::run(cli, &mut stdout));
    let code = auditctl::exit_code(&res);
    if let Err(e) = res {
        eprintln!("auditctl: {:#}", anyhow::Error::new(e));
    }
    ExitCode::from(code)
}
