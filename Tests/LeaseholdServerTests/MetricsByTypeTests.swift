import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport
import TransportTesting

/// The per-type series, after a scripted sequence on a manual clock (exact durations).
@Suite struct MetricsByTypeTests {
    @Test func perTypeSeriesHaveTheRightValuesAfterAScriptedSequence() async throws {
        let clock = ManualClock()
        // Minutes pass on the manual clock in single steps: no ping or dead-peer deadline may fall
        // inside them (a connection would be closed as dead, racing its release).
        let server = try TestServer(clock: clock) {
            $0.pingInterval = .seconds(3600)
            $0.deadAfter = .seconds(7200)
        }
        var metrics = try await server.metrics()
        #expect(metrics.value("leasehold_build_info", ["version": leaseholdVersion]) == 1)
        #expect(metrics.types["leasehold_lease_duration_seconds"] == "histogram")
        #expect(metrics.value("leasehold_grants_by_type_total", ["type": "array"]) == 0)
        #expect(metrics.value("leasehold_oldest_waiter_seconds", ["type": "switch"]) == 0)

        let (a, _) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "a")
        let (b, _) = try await server.queue(#"[{"type": "switch", "labels": {}, "count": 2}]"#, holder: "b")
        clock.advance(by: .seconds(30))
        let impatient = try await server.acquire(#"[{"name": "switch-01"}]"#, holder: "t", wait: "0")
        try await impatient.expectFailure("wait_timeout", closeCode: 4408)
        let (leaver, _) = try await server.queue(#"[{"name": "array-01"}, {"name": "switch-02"}]"#, holder: "l")
        metrics = try await server.metrics()
        #expect(metrics.value("leasehold_waiters_by_type", ["type": "switch"]) == 2)
        #expect(metrics.value("leasehold_waiters_by_type", ["type": "array"]) == 1)
        #expect(metrics.value("leasehold_oldest_waiter_seconds", ["type": "switch"]) == 30)
        #expect(metrics.value("leasehold_oldest_waiter_seconds", ["type": "array"]) == 0)
        #expect(metrics.value("leasehold_wait_timeouts_total") == 1)
        leaver.send(#"{"op":"release"}"#)
        _ = try await leaver.expectClose()

        a.send(#"{"op":"release"}"#)
        _ = try await b.expectEvent("granted")
        clock.advance(by: .seconds(90))
        b.send(#"{"op":"release"}"#)
        _ = try await b.expectClose()
        try await server.waitUntilFree("switch-02")
        metrics = try await server.metrics()
        #expect(metrics.value("leasehold_queue_departures_total", ["reason": "release"]) == 1)
        #expect(metrics.value("leasehold_grants_by_type_total", ["type": "switch"]) == 2)
        #expect(metrics.value("leasehold_grants_by_type_total", ["type": "array"]) == 0)
        #expect(metrics.value("leasehold_grant_wait_seconds_count", ["type": "switch"]) == 2)
        #expect(metrics.value("leasehold_grant_wait_seconds_sum", ["type": "switch"]) == 30)
        #expect(metrics.value("leasehold_grant_wait_seconds_bucket", ["type": "switch", "le": "0.01"]) == 1)
        #expect(metrics.value("leasehold_grant_wait_seconds_bucket", ["type": "switch", "le": "30"]) == 2)
        #expect(metrics.value("leasehold_grant_wait_seconds_bucket", ["type": "switch", "le": "86400"]) == 2)
        #expect(metrics.value("leasehold_lease_duration_seconds_count", ["type": "switch"]) == 2)
        #expect(metrics.value("leasehold_lease_duration_seconds_sum", ["type": "switch"]) == 120)
        #expect(metrics.value("leasehold_lease_duration_seconds_bucket", ["type": "switch", "le": "60"]) == 1)
        #expect(metrics.value("leasehold_lease_duration_seconds_bucket", ["type": "switch", "le": "300"]) == 2)
        #expect(metrics.value("leasehold_waiters_by_type", ["type": "switch"]) == 0)
        #expect(metrics.value("leasehold_oldest_waiter_seconds", ["type": "switch"]) == 0)
        // Bounded labels: no series names a resource or a holder.
        #expect(!metrics.samples.contains { $0.labels.values.contains { ["switch-01", "switch-02", "a", "b"].contains($0) } })
        await server.stop()
    }
}
