"""The center: the policy administration point of a ztgate site (docs/center.md).

It holds identities and their roles, one-time enrollment tokens, the certificates it issued and the
policy revisions, and its own audit, in one store (SQLite, or PostgreSQL for several replicas). It
issues short-lived certificates from CSRs and streams Ed25519-signed policy bundles to the gateways,
which verify and enforce them on their own: no request ever waits for the center.

One job per module: ``config`` (center.toml), ``migrations`` and ``db`` (the schema, SQLite and
PostgreSQL), ``store`` (what the center keeps), ``authority`` (CA, signing key, fingerprint, CSRs),
``tokens``, ``bundles`` (the signed documents, shared with the gateways), ``stream`` (the
subscription), ``api`` and ``app`` (the HTTPS JSON API), ``service`` (a running center), ``client``
(the API's client, for the CLI, enrollment and gateways), ``setup`` (``center init``) and ``cli``.
"""
