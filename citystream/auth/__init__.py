"""Who is calling: API keys, users, OIDC tokens and the operator token, checked once per request."""
