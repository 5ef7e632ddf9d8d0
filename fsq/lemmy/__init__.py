"""fsq.lemmy"""
