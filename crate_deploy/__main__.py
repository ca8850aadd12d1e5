from crate_deploy.cli import main

main()
