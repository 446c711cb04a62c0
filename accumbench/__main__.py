from accumbench.cli import main

main()
