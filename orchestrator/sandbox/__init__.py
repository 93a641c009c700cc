"""Real local stand-ins (HAProxy, HTTP apps) for the demo and the tests."""
