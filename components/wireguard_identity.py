"""What a site's peer must know about it: its public key and its Elastic IP."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from core import keys


@dataclass
class WireGuardIdentityArgs:
    key_generation: int
    """Raising it replaces the key bytes: a new key pair, applied in place (rotation)."""
    tags: dict[str, str]
    """Tags for the Elastic IP."""


class WireGuardIdentity(pulumi.ComponentResource):
    """A site's WireGuard key pair and public address, made before either gateway.

    Both are allocated ahead of the gateways so that each side's security group and
    config can name the other's address and key without a dependency cycle.
    The key is 32 random bytes kept (encrypted) in Pulumi state, so it is stable across
    `pulumi up` runs and instance replacements; X25519 clamps it as `wg genkey` would.
    """

    private_key: pulumi.Output[str]
    public_key: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    allocation_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: WireGuardIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:gateway:WireGuardIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        key_bytes = random.RandomBytes(
            f"{name}-wireguard-key",
            length=32,
            keepers={"generation": str(args.key_generation)},
            opts=child,
        )
        # RandomBytes marks base64 secret already; say so here too, since it must stay one.
        self.private_key = pulumi.Output.secret(key_bytes.base64)
        # A public key derived from a secret inherits secrecy; it is meant to be public.
        self.public_key = pulumi.Output.unsecret(self.private_key.apply(keys.public_key))

        address = aws.ec2.Eip(
            f"{name}-address",
            domain="vpc",
            tags={**args.tags, "Name": f"{name}-wireguard"},
            opts=child,
        )
        self.public_ip = address.public_ip
        self.allocation_id = address.allocation_id

        self.register_outputs({"publicKey": self.public_key, "publicIp": self.public_ip})
