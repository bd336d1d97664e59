"""Protocol-faithful fakes of systems that cannot run here (SAP B1 Service Layer, Tally).

Each is a real HTTP server on 127.0.0.1 (random port, its own thread) that behaves as the
vendor's public documentation describes; the adapters are tested against them over real
sockets. ``tls`` makes a throw-away self-signed certificate for the HTTPS cases.
"""
