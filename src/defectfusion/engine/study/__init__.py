"""Study statistics: intervals over seeds and images, the verdict rule, power, and the simulation that
checks the intervals.
"""
