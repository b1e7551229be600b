from mlfork.cli import main

main()
