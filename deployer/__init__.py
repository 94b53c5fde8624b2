"""The deployer side of day 2: run the on-gateway apply and check scripts through SSM Run Command.

Why this exists: pulumi-command's `remote.Command` speaks only SSH and has no native SSM
transport (pulumi/pulumi-command #50; native SSM is still an open request, #439), and the
gateways have no SSH. The maintainers' answer is a `local.Command` that sends the command with
SSM. But `send-command` returns at once, and the AWS CLI's `command-executed` waiter gives up
after about 100 s, shorter than a first boot. So this module sends `AWS-RunShellScript`, polls
`get_command_invocation` with its own deadline, and turns the outcome into an exit status and a
few clear lines that `pulumi up` shows: `python -m deployer apply` and `python -m deployer verify`.

A site with two gateways adds two: `python -m deployer public-ipv4` (the interface's
AssociatePublicIpAddress, which pulumi-aws cannot set) and `python -m deployer drain` (before a
gateway is replaced, the other one takes the site over if this one holds it).
"""
