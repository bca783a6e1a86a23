"""Assets (vehicles, charge points) and their encrypted signer keys.

An asset is an Ethereum account and a DID. Its private key lives in a separate table
(`AssetKey`) so that nothing that lists or renders assets ever loads key material: the
admin, exports and selectors work on `Asset` alone. The key row holds only AES-256-GCM
ciphertext, sealed by `assets.crypto` with the asset's address as associated data.
An asset whose key lives in a PKCS#11 token (`assets.pkcs11`) has no key row: the
asset records the token's label, the key's CKA_ID and its public key.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class AssetKind(models.TextChoices):
    VEHICLE = "vehicle", "Vehicle"
    CHARGE_POINT = "charge_point", "Charge point"
    OTHER = "other", "Other"


class SignerBackend(models.TextChoices):
    """Where an asset's key is held; `assets.signers` maps each to a Signer class."""

    LOCAL_ENCRYPTED = "local", "Encrypted in the database"
    PKCS11 = "pkcs11", "PKCS#11 token"


class Asset(models.Model):
    """One asset: its canonical DID, address, and how the dashboard knows it."""

    did = models.CharField(
        "DID",
        max_length=100,
        unique=True,
        help_text="Canonical form: did:ethr:CHAIN:ADDRESS, address EIP-55 checksummed.",
    )
    address = models.CharField(
        max_length=42, unique=True, help_text="EIP-55 checksummed address."
    )
    kind = models.CharField(
        max_length=20, choices=AssetKind.choices, default=AssetKind.OTHER
    )
    external_id = models.CharField(
        "external id",
        max_length=200,
        blank=True,
        default="",
        help_text="Id in the dashboard (OCPI token uid, EVSE uid).",
    )
    label = models.CharField(max_length=200, blank=True, default="")
    chain = models.CharField(max_length=20, default="volta")
    active = models.BooleanField(default=True)
    signer_backend = models.CharField(
        max_length=20,
        choices=SignerBackend.choices,
        default=SignerBackend.LOCAL_ENCRYPTED,
    )
    # PKCS#11 backend only: where the key lives and its public half (never the key).
    token_label = models.CharField(
        "token", max_length=64, blank=True, default="", help_text="PKCS#11 token label."
    )
    token_key_id = models.CharField(
        "token key id",
        max_length=64,
        blank=True,
        default="",
        help_text="CKA_ID of the private key in the token (hex).",
    )
    public_key = models.CharField(
        max_length=128,
        blank=True,
        default="",
        help_text="Uncompressed secp256k1 public key x || y (hex), token keys only.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["external_id"],
                condition=~Q(external_id=""),
                name="assets_asset_external_id_unique_when_set",
            ),
        ]

    def __str__(self) -> str:
        return self.label or self.did


class AssetKey(models.Model):
    """The asset's private key, encrypted at rest (never plaintext, never rendered).

    `key_id` names the master key in `EVOPS_KEY_ENCRYPTION_KEYS` that sealed it;
    `algorithm` versions the envelope so the format can change without guessing.
    """

    asset = models.OneToOneField(
        Asset, on_delete=models.CASCADE, primary_key=True, related_name="key"
    )
    key_id = models.CharField(max_length=32)
    algorithm = models.CharField(max_length=32, default="aes-256-gcm/v1")
    nonce = models.BinaryField(max_length=12)
    ciphertext = models.BinaryField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["key_id"], name="assets_key_key_id_idx")]

    def __str__(self) -> str:
        return f"key of asset {self.asset_id} (sealed with {self.key_id})"

    def __repr__(self) -> str:
        return f"<AssetKey asset={self.asset_id} key_id={self.key_id!r}>"


class OperatorAccount(models.Model):
    """The relay-mode sender: the one account that sends `setAttributeSigned` and pays.

    Its key is sealed by `assets.crypto` like an asset key but with the operator
    purpose in the associated data, so an asset's ciphertext copied onto this row (or
    this one onto an asset's key row) fails authentication. The envelope lives on the
    row itself: there are one or two operators, and the admin lists only the columns
    it names. Which operator a chain uses: `CHAIN_OPERATOR_ADDRESS`, or the only one
    stored for that chain (`assets.selectors.operator_account_for`).
    """

    label = models.CharField(max_length=200, blank=True, default="")
    address = models.CharField(
        max_length=42, unique=True, help_text="EIP-55 checksummed address (fund it)."
    )
    chain = models.CharField(max_length=20, default="volta")
    key_id = models.CharField(max_length=32)
    algorithm = models.CharField(max_length=32, default="aes-256-gcm/v1")
    nonce = models.BinaryField(max_length=12)
    ciphertext = models.BinaryField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "operator account"

    def __str__(self) -> str:
        return self.label or self.address

    def __repr__(self) -> str:
        return (
            f"<OperatorAccount {self.address} chain={self.chain!r} "
            f"key_id={self.key_id!r}>"
        )
