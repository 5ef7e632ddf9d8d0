from fsq.cli.main import main

main()
