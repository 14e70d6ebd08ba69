"""matfunnel.dft"""
