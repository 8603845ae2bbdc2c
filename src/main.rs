fn main() -> std::process::ExitCode {
    abstractgateway::cli::main()
}
