"""The STA HTTP surface: routes, `$batch`, result formats, the OpenAPI document, shared HTTP helpers."""
