"""comparing"""
