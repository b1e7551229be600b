"""mirroring"""
