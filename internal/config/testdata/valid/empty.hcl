# A fleet file may hold no fleets at all.
