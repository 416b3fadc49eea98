-- Credentials of the platform's principals (citystream/auth). API keys: a random 256-bit secret, kept only as
-- its SHA-256 (a slow hash buys nothing for a secret of that entropy, and keys are checked on every request).
-- Users (HTTP Basic, for FROST clients): passwords people chose, kept as salted scrypt hashes.
CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^[a-z0-9]{12}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    roles text[] NOT NULL CHECK (roles <@ ARRAY['read', 'create', 'update', 'delete', 'admin']),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);

CREATE TABLE api_users (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._@-]{1,100}$'),
    password_hash text NOT NULL,
    roles text[] NOT NULL CHECK (roles <@ ARRAY['read', 'create', 'update', 'delete', 'admin']),
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);
