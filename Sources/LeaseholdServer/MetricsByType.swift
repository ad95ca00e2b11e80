import LeaseCore

/// The series a Grafana user expects per resource type (labels are bounded: type, never resource
/// or holder): grants, grant waits and lease durations as histograms, waiters and the age of the
/// oldest waiter (the starvation alert), wait timeouts and queue departures, and the build.
struct TypeMetrics {
    static let waitBounds: [Double] = [0.01, 0.1, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400]
    static let durationBounds: [Double] = [1, 10, 60, 300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400, 259_200, 604_800]

    var grants: [String: Int] = [:]
    var grantWait: [String: Metrics.Histogram] = [:]
    var leaseDuration: [String: Metrics.Histogram] = [:]
    var waitTimeouts = 0
    /// Waiters that left the queue without a grant, by why (release, disconnect, dead_peer, …).
    var queueDepartures: [String: Int] = [:]
    /// Read from the table at each scrape.
    var waiters: [String: Int] = [:]
    var oldestWaiter: [String: Double] = [:]
    /// Types seen, so a type's series stay once it has had a lease (counters never vanish).
    var types: Set<String> = []

    /// A grant of resources of these types after `wait` seconds in the queue.
    mutating func granted(types granted: [String], wait: Double) {
        for type in Set(granted) {
            types.insert(type)
            grants[type, default: 0] += 1
            grantWait[type, default: Metrics.Histogram(bounds: Self.waitBounds)].observe(wait)
        }
    }

    /// A granted lease ended after `held` seconds.
    mutating func ended(types held: [String], seconds: Double) {
        for type in Set(held) {
            types.insert(type)
            leaseDuration[type, default: Metrics.Histogram(bounds: Self.durationBounds)].observe(seconds)
        }
    }

    /// Waiters per type and the oldest one's age, from a snapshot's queue (a waiter that wants
    /// several types counts under each). `now`: the snapshot's time.
    mutating func readQueue(_ snapshot: Snapshot, now: Tick) {
        var typeOf: [String: String] = [:]
        var counts: [String: Int] = [:]
        var oldest: [String: Double] = [:]
        for waiter in snapshot.queue {
            var wanted: Set<String> = []
            for group in waiter.want {
                switch group {
                case .type(let type, _, _): wanted.insert(type)
                case .name(let name):
                    if typeOf.isEmpty { for resource in snapshot.resources { typeOf[resource.name] = resource.type } }
                    if let type = typeOf[name] { wanted.insert(type) }
                }
            }
            let age = Double(max(0, now.nanoseconds - waiter.since.nanoseconds)) / 1e9
            for type in wanted {
                counts[type, default: 0] += 1
                oldest[type] = max(oldest[type] ?? 0, age)
            }
        }
        for resource in snapshot.resources { types.insert(resource.type) }
        waiters = counts
        oldestWaiter = oldest
    }

    func render(into out: inout String) {
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        let sorted = types.sorted()
        family("leasehold_build_info", "gauge", "Always 1; the version of the server.")
        out += "leasehold_build_info{version=\"\(Metrics.escape(leaseholdVersion))\"} 1\n"
        family("leasehold_grants_by_type_total", "counter", "Leases granted, by resource type (a lease of several types counts under each).")
        for type in sorted { out += "leasehold_grants_by_type_total{type=\"\(Metrics.escape(type))\"} \(grants[type, default: 0])\n" }
        family("leasehold_waiters_by_type", "gauge", "Requests waiting in the queue, by the resource types they want.")
        for type in sorted { out += "leasehold_waiters_by_type{type=\"\(Metrics.escape(type))\"} \(waiters[type, default: 0])\n" }
        family("leasehold_oldest_waiter_seconds", "gauge", "How long the oldest waiter for a type has waited (0: nobody waits).")
        for type in sorted { out += "leasehold_oldest_waiter_seconds{type=\"\(Metrics.escape(type))\"} \(oldestWaiter[type, default: 0])\n" }
        family("leasehold_wait_timeouts_total", "counter", "Waiters that were not granted within their wait (or at once under wait 0).")
        out += "leasehold_wait_timeouts_total \(waitTimeouts)\n"
        family("leasehold_queue_departures_total", "counter", "Waiters that left the queue without a grant, by reason.")
        for reason in ["release", "disconnect", "dead_peer", "protocol", "shutdown", "expired"] {
            out += "leasehold_queue_departures_total{reason=\"\(reason)\"} \(queueDepartures[reason, default: 0])\n"
        }
        family("leasehold_grant_wait_seconds", "histogram", "Time from acquire to grant, by resource type.")
        for type in sorted { Self.histogram(grantWait[type] ?? Metrics.Histogram(bounds: Self.waitBounds), "leasehold_grant_wait_seconds", type, &out) }
        family("leasehold_lease_duration_seconds", "histogram", "How long granted leases were held, by resource type.")
        for type in sorted { Self.histogram(leaseDuration[type] ?? Metrics.Histogram(bounds: Self.durationBounds), "leasehold_lease_duration_seconds", type, &out) }
    }

    static func histogram(_ histogram: Metrics.Histogram, _ name: String, _ type: String, _ out: inout String) {
        histogram.render(name, label: "type=\"\(Metrics.escape(type))\"", into: &out)
    }
}
