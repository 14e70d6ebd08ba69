"""matfunnel.engine"""
