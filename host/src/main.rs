//! `mta`: run the mail transfer agent or manage its agents. See `mta --help`.

fn main() -> std::process::ExitCode {
    mta_host::cli::main()
}
