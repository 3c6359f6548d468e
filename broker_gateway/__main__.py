from broker_gateway.cli import main

main()
