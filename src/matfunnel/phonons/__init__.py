"""matfunnel.phonons"""
