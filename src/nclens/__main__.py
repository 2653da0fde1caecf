from nclens.cli import main

main()
