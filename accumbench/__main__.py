from accumbench.cli.app import main

main()
