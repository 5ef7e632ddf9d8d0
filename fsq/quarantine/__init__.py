"""fsq.quarantine: the encrypted vault.

* ``keys``      - the vault X25519 key pair and its passphrase-encrypted private key file;
* ``seal``      - the versioned sealing format of one entry (``<id>.key`` + ``<id>.blob``);
* ``store``     - the ``VaultStore`` interface; ``store_dir`` (``file://``), ``store_s3``.

Nothing is re-exported here on purpose: ``fsq.quarantine.seal`` is both a module and a function
in it, and importing this package should not load ``cryptography`` for callers that only need
``store``. Import from the submodules.
"""
