"""fsq.server"""
