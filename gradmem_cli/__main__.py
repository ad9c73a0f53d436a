from gradmem_cli.cli import main

main()
