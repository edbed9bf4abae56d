from visage.cli import main

main()
